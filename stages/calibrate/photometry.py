"""Photometric calibration: a zero point from matched reference stars, and fluxes in nJy.

:func:`fit_zero_point` compares the instrumental magnitudes ``-2.5 log10(instFlux)`` of matched
stars with their reference magnitudes in the band of the exposure: the zero point is the
weighted mean of ``ref_mag + 2.5 log10(instFlux)``, iteratively sigma-clipped (variables,
blends and mismatches drop out), with weights ``1 / (sigma_inst^2 + sigma_ref^2 + floor^2)``.
Its uncertainty is the standard error of that mean, inflated by the square root of the reduced
chi-square when the scatter exceeds the errors. The result is a :class:`repo.exposure.PhotoCalib`
(``calibration_mean`` nJy per image unit; ``zero_point`` the AB magnitude of one image unit).

Reference magnitudes (:func:`reference_magnitudes`): when the reference catalog was measured in
the exposure's own system (the simulated survey's refcat has ``phot_<band>_mag`` in the SimCam
bands) no color term is needed. Otherwise a :class:`ColorTerm` maps the catalog to the band:
``mag = primary + sum_k c_k color^k`` with ``color = color1 - color2``. :data:`GAIA_TO_DECAM` holds
the Legacy Surveys' (DR9/DR10) polynomials from Gaia G and BP - RP to DECam g, r, i, z (fitted by
R. Zhou, 2020; valid for stars with -0.6 < BP - RP < 4.1, colors are clipped to that range).

Fluxes in nJy (:func:`calibrate_fluxes`): for every pair of instrumental columns ``<name>Flux``
and ``<name>FluxErr`` of a source table (``psfFlux``, ``ap09Flux``, ...), the calibrated table
keeps the instrumental values as ``<name>InstFlux`` and ``<name>InstFluxErr`` (image units) and
holds ``<name>Flux`` and ``<name>FluxErr`` in nJy, as LSST's ``Source`` catalogs do; the flux
error includes the calibration uncertainty in quadrature (:meth:`PhotoCalib.instflux_to_nanojansky`).
A table that already has ``<name>InstFlux`` is refused, so nothing is calibrated twice.

Flat-field normalization matters for comparing with truth: the zero point refers to the image
units of the calibrated exposure. If the flat is normalized to 1 on the optical axis (the
simulator's "unit flat response"), one image unit is one electron at unit response and the
zero point equals the visit's truth ``zero_point``; a flat normalized to its mean over a detector
shifts the zero point by ``2.5 log10`` of that mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from repo.errors import DrpError
from repo.exposure import PhotoCalib


@dataclass(frozen=True)
class ColorTerm:
    """Reference magnitude in a band from catalog magnitudes and a color polynomial.

    ``mag = primary + sum_k coefficients[k] * clip(color1 - color2, *color_range)^k``.
    """

    primary: str
    color1: str
    color2: str
    coefficients: tuple[float, ...]
    color_range: tuple[float, float] = (-np.inf, np.inf)

    def apply(self, refcat: Table) -> np.ndarray:
        """Magnitudes of the catalog's stars in the target band (NaN where an input is missing)."""
        for name in (self.primary, self.color1, self.color2):
            if name not in refcat.colnames:
                raise DrpError(f"color term needs reference column {name!r}")
        color = np.asarray(refcat[self.color1], float) - np.asarray(refcat[self.color2], float)
        color = np.clip(color, *self.color_range)
        return np.asarray(refcat[self.primary], float) + np.polynomial.polynomial.polyval(
            color, self.coefficients
        )


def _gaia(coefficients: tuple[float, ...]) -> ColorTerm:
    return ColorTerm(
        "phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", coefficients, (-0.6, 4.1)
    )


#: Gaia (G, BP - RP) -> DECam AB magnitudes, the Legacy Surveys' stellar transformations.
GAIA_TO_DECAM: dict[str, ColorTerm] = {
    "g": _gaia(
        (
            -0.1178631039,
            0.3650113495,
            0.5608615360,
            -0.2850687702,
            -1.0243473939,
            1.4378375491,
            0.0679401731,
            -1.1713172509,
            0.9107811975,
            -0.3374324004,
            0.0683946390,
            -0.0073089582,
            0.0003230170,
        )
    ),  # fmt: skip
    "r": _gaia(
        (
            0.1139078673,
            -0.2868955307,
            0.0013196434,
            0.1029151074,
            0.1196710702,
            -0.3729031390,
            0.1859874242,
            0.1370162451,
            -0.1808580848,
            0.0803219195,
            -0.0180218196,
            0.0020584707,
            -0.0000953486,
        )
    ),  # fmt: skip
    "i": _gaia(
        (
            0.3396481660,
            -0.6491867119,
            -0.3330769819,
            0.4381097294,
            0.5752125977,
            -1.4746570523,
            1.2979140762,
            -0.6371018151,
            0.1948940062,
            -0.0382055596,
            0.0046907449,
            -0.0003296841,
            0.0000101480,
        )
    ),  # fmt: skip
    "z": _gaia(
        (
            0.4811198057,
            -0.9990015041,
            0.1403990019,
            0.2150988888,
            -0.2917655866,
            0.1326831887,
            -0.0259205004,
            0.0018548776,
        )
    ),  # fmt: skip
}

#: Color terms by (instrument, reference system): the band's magnitude from a reference catalog
#: measured in another system (see :func:`reference_system`).
COLOR_TERMS: dict[tuple[str, str], dict[str, ColorTerm]] = {("DECam", "gaia"): GAIA_TO_DECAM}


def reference_system(refcat: Table) -> str:
    """``"gaia"`` for a catalog with Gaia's G, BP and RP magnitudes, else ``"own"`` (one
    measured in the bands of the exposures, as the simulated survey's)."""
    gaia = ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag")
    return "gaia" if all(name in refcat.colnames for name in gaia) else "own"


def color_term_for(instrument: str, band: str, refcat: Table) -> ColorTerm | None:
    """The color term from ``refcat`` to an instrument's band; None when the catalog has
    ``phot_<band>_mag`` of its own. Raises :class:`DrpError` when no transformation is known."""
    if f"phot_{band}_mag" in refcat.colnames:
        return None
    system = reference_system(refcat)
    terms = COLOR_TERMS.get((instrument, system), {})
    if band not in terms:
        known = ", ".join(f"{i} from {s}" for i, s in COLOR_TERMS) or "none"
        raise DrpError(
            f"the reference catalog ({system} system) has no phot_{band}_mag and no color term "
            f"to {instrument} band {band!r} is known (color terms: {known})"
        )
    return terms[band]


@dataclass(frozen=True)
class PhotometryConfig:
    """Options of the zero-point fit.

    Parameters
    ----------
    clip_sigma : float
        Rejection threshold (robust sigmas) of the iterative clipping.
    n_iterations : int
        Clipping rounds.
    error_floor_mag : float
        Added in quadrature to every star's error (flat-field and PSF-model residuals).
    min_snr : float
        Stars with a lower instrumental S/N are not used.
    min_stars : int
        Fewest stars for a zero point.
    """

    clip_sigma: float = 3.0
    n_iterations: int = 5
    error_floor_mag: float = 0.003
    min_snr: float = 20.0
    min_stars: int = 1


@dataclass
class ZeroPointResult:
    """A fitted zero point (AB mag of one image unit) and how it was obtained."""

    zero_point: float
    zero_point_err: float
    n_used: int
    n_input: int
    rms_mag: float
    used: np.ndarray

    @property
    def photo_calib(self) -> PhotoCalib:
        """The :class:`PhotoCalib` of this zero point."""
        return PhotoCalib.from_zero_point(self.zero_point, self.zero_point_err)


def reference_magnitudes(
    refcat: Table, band: str, color_term: ColorTerm | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference magnitudes (and errors) of the catalog's stars in a band.

    Without a color term the catalog must have ``phot_<band>_mag`` (its error column
    ``phot_<band>_mag_err`` is used when present, else 0). With one, the error is 0.01 mag (the
    typical scatter of such transformations) unless the catalog has an error column for the
    primary magnitude.
    """
    if color_term is not None:
        mags = color_term.apply(refcat)
        err_column = f"{color_term.primary}_err"
        default_err = 0.01
    else:
        column = f"phot_{band}_mag"
        if column not in refcat.colnames:
            raise DrpError(
                f"reference catalog has no {column!r}; give a color term for band {band!r}"
            )
        mags, err_column, default_err = np.asarray(refcat[column], float), f"{column}_err", 0.0
    if err_column in refcat.colnames:
        errs = np.asarray(refcat[err_column], float)
    else:
        errs = np.full(len(mags), default_err)
    return mags, errs


def fit_zero_point(
    inst_flux: np.ndarray,
    inst_flux_err: np.ndarray,
    ref_mag: np.ndarray,
    ref_mag_err: np.ndarray | None = None,
    config: PhotometryConfig | None = None,
) -> ZeroPointResult:
    """Sigma-clipped weighted zero point from instrumental fluxes and reference magnitudes.

    Parameters
    ----------
    inst_flux, inst_flux_err : numpy.ndarray
        Instrumental fluxes of the matched stars and their errors (image units).
    ref_mag, ref_mag_err : numpy.ndarray
        Their reference AB magnitudes in the exposure's band, and errors.
    config : PhotometryConfig, optional

    Returns
    -------
    ZeroPointResult
        ``zero_point`` such that ``mag = zero_point - 2.5 log10(instFlux)``.

    Raises
    ------
    repo.errors.DrpError
        Inputs of different lengths, or fewer than ``min_stars`` usable stars.
    """
    config = config or PhotometryConfig()
    flux = np.asarray(inst_flux, float)
    flux_err = np.asarray(inst_flux_err, float)
    mag = np.asarray(ref_mag, float)
    mag_err = np.zeros_like(mag) if ref_mag_err is None else np.asarray(ref_mag_err, float)
    if not (flux.shape == flux_err.shape == mag.shape == mag_err.shape):
        raise DrpError("fit_zero_point: fluxes, errors and magnitudes differ in length")
    ok = np.isfinite(flux) & np.isfinite(flux_err) & np.isfinite(mag) & (flux > 0)
    ok &= flux_err > 0
    ok[ok] &= flux[ok] / flux_err[ok] >= config.min_snr
    if ok.sum() < config.min_stars:
        raise DrpError(
            f"zero point: {int(ok.sum())} usable stars (S/N >= {config.min_snr}); "
            f"at least {config.min_stars} needed"
        )
    zp_star = np.full(flux.shape, np.nan)
    zp_star[ok] = mag[ok] + 2.5 * np.log10(flux[ok])
    sigma = np.full(flux.shape, np.inf)
    inst_err = 2.5 / math.log(10.0) * flux_err[ok] / flux[ok]
    sigma[ok] = np.sqrt(inst_err**2 + np.nan_to_num(mag_err[ok]) ** 2 + config.error_floor_mag**2)
    used = ok.copy()
    zp = float(np.median(zp_star[ok]))
    for _ in range(config.n_iterations):
        weights = 1.0 / sigma[used] ** 2
        zp = float(np.sum(weights * zp_star[used]) / np.sum(weights))
        resid = (zp_star - zp) / sigma
        scatter = max(_robust_std(resid[used]), 1.0) if used.sum() > 2 else 1.0
        new = ok & (np.abs(resid) <= config.clip_sigma * scatter)
        if new.sum() < config.min_stars or np.array_equal(new, used):
            break
        used = new
    weights = 1.0 / sigma[used] ** 2
    zp = float(np.sum(weights * zp_star[used]) / np.sum(weights))
    n = int(used.sum())
    err = 1.0 / math.sqrt(float(np.sum(weights)))
    if n > 1:
        chi2 = float(np.sum(weights * (zp_star[used] - zp) ** 2)) / (n - 1)
        err *= math.sqrt(max(chi2, 1.0))
    rms = float(np.sqrt(np.mean((zp_star[used] - zp) ** 2)))
    return ZeroPointResult(zp, err, n, int(ok.sum()), rms, used)


def _robust_std(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def calibrate_photometry(
    sources: Table,
    refcat: Table,
    source_index: np.ndarray,
    ref_index: np.ndarray,
    band: str,
    color_term: ColorTerm | None = None,
    flux_column: str = "psfFlux",
    config: PhotometryConfig | None = None,
) -> ZeroPointResult:
    """Zero point of an exposure from its sources matched to reference stars.

    Parameters
    ----------
    sources : astropy.table.Table
        Source table with instrumental ``flux_column`` and ``flux_column + 'Err'``.
    refcat : astropy.table.Table
        Reference catalog (rows addressed by ``ref_index``).
    source_index, ref_index : numpy.ndarray
        Matched pairs (e.g. ``AstrometryResult.matches``).
    band : str
        Band of the exposure.
    color_term : ColorTerm, optional
        Needed when the catalog has no ``phot_<band>_mag`` in the exposure's system.
    flux_column : str
        Instrumental flux column.
    config : PhotometryConfig, optional

    Returns
    -------
    ZeroPointResult
        Use ``.photo_calib`` for the :class:`PhotoCalib`. Known variables
        (``phot_variable_flag``) are left out.
    """
    for name in (flux_column, flux_column + "Err"):
        if name not in sources.colnames:
            raise DrpError(f"calibrate_photometry: the source table has no column {name!r}")
    source_index = np.asarray(source_index, int)
    ref_index = np.asarray(ref_index, int)
    mags, errs = reference_magnitudes(refcat, band, color_term)
    mags, errs = mags[ref_index].copy(), errs[ref_index]
    if "phot_variable_flag" in refcat.colnames:
        mags[np.asarray(refcat["phot_variable_flag"], bool)[ref_index]] = np.nan
    return fit_zero_point(
        np.asarray(sources[flux_column], float)[source_index],
        np.asarray(sources[flux_column + "Err"], float)[source_index],
        mags,
        errs,
        config,
    )


def calibrate_fluxes(sources: Table, photo_calib: PhotoCalib) -> Table:
    """A copy of ``sources`` with every ``<name>Flux``/``<name>FluxErr`` pair in nJy.

    The instrumental values move to ``<name>InstFlux`` and ``<name>InstFluxErr``; see the module
    docstring. Raises :class:`DrpError` if the table has no flux pair or is already calibrated.
    """
    pairs = [
        c[: -len("Flux")]
        for c in sources.colnames
        if c.endswith("Flux") and not c.endswith("InstFlux") and c + "Err" in sources.colnames
    ]
    if not pairs:
        raise DrpError("calibrate_fluxes: no <name>Flux / <name>FluxErr columns to calibrate")
    done = [p for p in pairs if p + "InstFlux" in sources.colnames]
    if done:
        raise DrpError(f"calibrate_fluxes: {done[0]}InstFlux exists; the table is calibrated")
    out = sources.copy()
    for name in pairs:
        flux = np.asarray(sources[name + "Flux"], float)
        err = np.asarray(sources[name + "FluxErr"], float)
        out[name + "InstFlux"] = flux
        out[name + "InstFluxErr"] = err
        njy, njy_err = photo_calib.instflux_to_nanojansky(flux, err)
        out[name + "Flux"] = njy
        out[name + "FluxErr"] = njy_err
        for column, unit in ((name + "Flux", "nJy"), (name + "FluxErr", "nJy")):
            out[column].unit = unit
    return out
