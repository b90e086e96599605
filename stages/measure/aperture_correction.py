"""Aperture correction: tie PSF fluxes to the total flux of point sources.

A PSF flux is as good as the PSF model's profile: a model whose core is right but whose wing is
not (a Moffat index 3.5 where the sky had 4.5) biases every PSF flux of the exposure by the same
fraction, 2% in that case. The aperture correction measures that fraction on the exposure's own
stars and removes it, as survey pipelines do (SDSS, Pan-STARRS, LSST):

1. on bright, isolated, unflagged stars of the stellar locus (the PSF-star selection of
   :func:`stages.characterize.psf_determination.select_psf_stars`, with an isolation radius beyond the
   aperture), the ratio of the flux in a large circular aperture (``radius``, 12 pixels by
   default: LSST's calibration aperture) to the PSF flux is fitted as a polynomial over the
   detector (a constant by default), each star weighted by the inverse variance of its ratio,
   outliers clipped;
2. the aperture flux is taken to the total flux with the PSF model's own fraction of flux
   within the aperture (:meth:`repo.psf.Psf.enclosed_fraction`): a correction of 0.1-0.3% at
   12 pixels on the simulated camera, so even a poor model of the wing costs little (a Moffat
   index off by one: under 2 mmag, against 20 mmag of PSF flux uncorrected);
3. ``psfFlux`` and ``psfFluxErr`` are multiplied by ``ratio(x, y) / enclosed(x, y)``; the factor
   and its uncertainty (from the fit) go to ``psfFluxApCorr`` and ``psfFluxApCorrErr``.

With too few stars the correction is the identity (``n_stars = 0``, ``applied`` false), and the
PSF fluxes are left as the model made them.

Why a constant and 12 pixels: on the default demo (1024^2 detectors, 15-35 usable stars each) a
degree-1 fit let noise through (one detector 12 mmag off), and larger apertures gather more of
the light of the sky and of neighbours' wings (aperture / true flux of faint isolated stars rises
by 2% from 12 to 25 pixels), so that the correction is biased high; 9 pixels leaves too much of
the wing to the model. Measured there: zero points within 4.2 mmag of truth on every detector,
even where the PSF had the wrong Moffat index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from repo.errors import DrpError
from repo.psf import Psf
from stages.characterize.psf_determination import PsfDeterminationConfig, select_psf_stars
from stages.characterize.psf_model import n_polynomial_terms, polynomial_terms

from .measurement import aperture_name


@dataclass(frozen=True)
class ApertureCorrectionConfig:
    """Settings of the aperture correction.

    Parameters
    ----------
    radius : float
        Radius (pixels) of the reference aperture; one of the measurement's ``aperture_radii``.
    min_snr : float
        Smallest Kron-flux S/N of a star used.
    degree : int
        Polynomial degree of the ratio over the detector (lowered when stars are few: at least
        three stars per coefficient).
    min_stars : int
        Fewer usable stars than this: no correction.
    clip_sigma : float
        Stars whose ratio is off by more than this many sigma (their error scaled by the fit's
        reduced chi^2) are left out, iteratively.
    enabled : bool
        False: leave PSF fluxes uncorrected.
    """

    radius: float = 12.0
    min_snr: float = 50.0
    degree: int = 0
    min_stars: int = 5
    clip_sigma: float = 3.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise DrpError(f"ApertureCorrectionConfig: radius must be > 0, got {self.radius}")
        if self.degree < 0 or self.min_stars < 1 or self.clip_sigma <= 0:
            raise DrpError("ApertureCorrectionConfig: degree >= 0, min_stars >= 1, clip_sigma > 0")


@dataclass(frozen=True)
class ApertureCorrection:
    """The fitted correction of one exposure.

    ``ratio_coeffs`` are the polynomial coefficients (terms of
    :func:`stages.characterize.psf_model.polynomial_terms` in ``u, v`` normalized to [-1, 1] over the
    detector) of aperture flux / PSF flux; ``enclosed`` the PSF model's fraction of flux within
    the aperture at the detector centre; ``covariance`` that of the coefficients.
    """

    ratio_coeffs: np.ndarray
    covariance: np.ndarray
    enclosed: float
    radius: float
    width: int
    height: int
    n_stars: int
    rms: float

    @property
    def applied(self) -> bool:
        """Whether the correction was measured (enough stars) rather than the identity."""
        return self.n_stars > 0

    @classmethod
    def identity(cls, radius: float, width: int, height: int) -> ApertureCorrection:
        """No correction: factor 1 everywhere."""
        return cls(np.array([1.0]), np.zeros((1, 1)), 1.0, radius, width, height, 0, 0.0)

    @property
    def degree(self) -> int:
        """Polynomial degree of the ratio."""
        return (math.isqrt(8 * self.ratio_coeffs.size + 1) - 3) // 2

    def factor(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multiplicative correction of PSF fluxes at pixel positions, and its uncertainty."""
        terms = _detector_terms(x, y, self.degree, self.width, self.height)
        ratio = self.ratio_coeffs @ terms
        var = np.einsum("i...,ij,j...->...", terms, self.covariance, terms)
        return ratio / self.enclosed, np.sqrt(np.maximum(var, 0.0)) / self.enclosed

    def summary(self) -> dict[str, float | int | bool]:
        """Figures for the exposure's summary: the correction at the centre in magnitudes."""
        cx, cy = 0.5 * (self.width - 1), 0.5 * (self.height - 1)
        factor, err = self.factor(np.array([cx]), np.array([cy]))
        return {
            "aperture_correction_mag": float(-2.5 * math.log10(factor[0])),
            "aperture_correction_err_mag": float(2.5 / math.log(10.0) * err[0] / factor[0]),
            "aperture_correction_stars": int(self.n_stars),
            "aperture_correction_rms": float(self.rms),
            "aperture_correction_radius": float(self.radius),
            "aperture_enclosed_fraction": float(self.enclosed),
        }


def measure_aperture_correction(
    catalog: Table,
    psf: Psf,
    shape: tuple[int, int],
    config: ApertureCorrectionConfig | None = None,
) -> ApertureCorrection:
    """Fit the aperture correction of an exposure from its measured sources.

    Parameters
    ----------
    catalog : astropy.table.Table
        Sources of :func:`stages.measure.measurement.detect_and_measure` with a PSF: ``psfFlux`` and
        the reference aperture's ``apNNFlux`` columns, instrumental units.
    psf : repo.psf.Psf
        The exposure's PSF model (for the enclosed fraction).
    shape : tuple of int
        ``(height, width)`` of the exposure.
    config : ApertureCorrectionConfig, optional

    Raises
    ------
    repo.errors.DrpError
        The catalog lacks the PSF flux or the reference aperture's columns.
    """
    config = config or ApertureCorrectionConfig()
    height, width = shape
    if not config.enabled:
        return ApertureCorrection.identity(config.radius, width, height)
    name = aperture_name(config.radius)
    needed = (
        "psfFlux",
        "psfFluxErr",
        "flag_psfFlux",
        f"{name}Flux",
        f"{name}FluxErr",
        f"{name}Flag",
    )
    missing = [c for c in needed if c not in catalog.colnames]
    if missing:
        raise DrpError(
            f"aperture correction (radius {config.radius:g} px): the catalog has no {missing}; "
            "measure that aperture (MeasurementConfig.aperture_radii)"
        )
    selection = PsfDeterminationConfig(
        min_snr=config.min_snr, isolation_radius=config.radius + 3.0, max_stars=10**9
    )
    stars = select_psf_stars(catalog, selection)
    stars &= ~np.asarray(catalog["flag_psfFlux"], bool) & ~np.asarray(catalog[f"{name}Flag"], bool)
    psf_flux = np.asarray(catalog["psfFlux"], float)
    ap_flux = np.asarray(catalog[f"{name}Flux"], float)
    ap_err = np.asarray(catalog[f"{name}FluxErr"], float)
    stars &= np.isfinite(psf_flux) & (psf_flux > 0) & np.isfinite(ap_flux) & (ap_err > 0)
    if stars.sum() < config.min_stars:
        return ApertureCorrection.identity(config.radius, width, height)
    x = np.asarray(catalog["x"], float)[stars]
    y = np.asarray(catalog["y"], float)[stars]
    ratio = ap_flux[stars] / psf_flux[stars]
    # The aperture's noise dominates (the PSF flux weighs the same pixels' core optimally).
    sigma = ap_err[stars] / psf_flux[stars]
    degree = config.degree
    while degree > 0 and stars.sum() < 3 * n_polynomial_terms(degree):
        degree -= 1
    terms = _detector_terms(x, y, degree, width, height)
    keep = np.ones(ratio.size, bool)
    for _ in range(10):
        coeffs, covariance, chi2 = _weighted_fit(terms[:, keep], ratio[keep], sigma[keep])
        scale = math.sqrt(max(chi2, 1.0))
        resid = np.abs(ratio - coeffs @ terms) / (sigma * scale)
        new = resid <= config.clip_sigma
        if new.sum() < max(config.min_stars, terms.shape[0] + 1) or np.array_equal(new, keep):
            break
        keep = new
    coeffs, covariance, chi2 = _weighted_fit(terms[:, keep], ratio[keep], sigma[keep])
    covariance = covariance * max(chi2, 1.0)
    rms = float(np.sqrt(np.mean((ratio[keep] - coeffs @ terms[:, keep]) ** 2)))
    enclosed = psf.enclosed_fraction(0.5 * (width - 1), 0.5 * (height - 1), config.radius)
    return ApertureCorrection(
        coeffs, covariance, enclosed, config.radius, width, height, int(keep.sum()), rms
    )


def _detector_terms(
    x: np.ndarray, y: np.ndarray, degree: int, width: int, height: int
) -> np.ndarray:
    """Polynomial terms in ``u, v``: pixel positions normalized to [-1, 1] over the detector."""
    xs, ys = 0.5 * (width - 1), 0.5 * (height - 1)
    return polynomial_terms(
        (np.asarray(x, float) - xs) / xs, (np.asarray(y, float) - ys) / ys, degree
    )


def _weighted_fit(
    terms: np.ndarray, values: np.ndarray, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted linear least squares: coefficients, their covariance, reduced chi^2."""
    a = terms.T / sigma[:, None]
    b = values / sigma
    coeffs, *_ = np.linalg.lstsq(a, b, rcond=None)
    covariance = np.linalg.pinv(a.T @ a)
    dof = max(values.size - terms.shape[0], 1)
    chi2 = float(np.sum((a @ coeffs - b) ** 2)) / dof
    return coeffs, covariance, chi2


def apply_aperture_correction(catalog: Table, correction: ApertureCorrection) -> Table:
    """A copy of ``catalog`` with ``psfFlux``/``psfFluxErr`` multiplied by the correction at
    each source, and the factor in ``psfFluxApCorr`` (``psfFluxApCorrErr`` its uncertainty).

    Raises :class:`DrpError` if the catalog is already corrected.
    """
    if "psfFluxApCorr" in catalog.colnames:
        raise DrpError("apply_aperture_correction: the catalog is already aperture-corrected")
    factor, err = correction.factor(
        np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
    )
    out = catalog.copy()
    out["psfFlux"] = np.asarray(catalog["psfFlux"], float) * factor
    out["psfFluxErr"] = np.asarray(catalog["psfFluxErr"], float) * factor
    for column in ("psfFlux", "psfFluxErr"):
        out[column].unit = catalog[column].unit
        out[column].description = catalog[column].description
    out["psfFluxApCorr"] = factor
    out[
        "psfFluxApCorr"
    ].description = f"aperture correction applied to psfFlux (to total, via a {correction.radius:g} px aperture)"
    out["psfFluxApCorrErr"] = err
    out["psfFluxApCorrErr"].description = "uncertainty of psfFluxApCorr (fit)"
    return out


__all__ = [
    "ApertureCorrection",
    "ApertureCorrectionConfig",
    "apply_aperture_correction",
    "measure_aperture_correction",
]
