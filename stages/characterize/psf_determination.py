"""PSF determination: fit the atmospheric part of the PSF on bright, isolated stars.

The story of :func:`determine_psf`:

1. **select** PSF stars from a source catalog (:func:`select_psf_stars`): unflagged (not
   saturated, blended, on a cosmic ray, bad or interpolated pixels, or the edge), S/N above a
   threshold, no other detection nearby, and on the stellar locus of the size distribution;
2. **reserve** a random fraction of them (20% by default) as a validation set;
3. **measure** each star's adaptive second moments on the image;
4. **fit** the atmosphere: with the optical part fixed (from the instrument model,
   :class:`stages.characterize.psf_model.OpticalField`), find the polynomial FWHM and ellipticity of a
   Moffat atmosphere whose convolution with the optics reproduces the stars' moments
   (Gauss-Newton steps on the moments with a Gaussian-approximation Jacobian, stars weighted by
   their S/N squared, outliers clipped), for Moffat indices ``beta`` of a grid, walking from
   3.5 towards lower chi^2 of the stars' pixels, each index fitted to convergence
   (:func:`_search_beta`); the grid holds half-integers, whose profiles GalSim draws fast;
5. **validate**: size and ellipticity residuals, model minus measured, on the reserved stars,
   with the model evaluated as later stages will (:meth:`OpticalAtmospherePsf.kernel_images`).

:func:`characterize` chains it with :func:`stages.measure.measurement.detect_and_measure`: a first pass
finds the stars, the PSF is fitted, a second pass measures PSF fluxes.

Sizes are determinant radii ``(ixx iyy - ixy^2)^(1/4)``; ellipticities are distortions
``e1 = (ixx - iyy) / (ixx + iyy)``, ``e2 = 2 ixy / (ixx + iyy)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.interpolate import RectBivariateSpline
from scipy.spatial import cKDTree

from repo.errors import DrpError
from repo.exposure import Exposure
from stages.measure.measurement import MeasurementConfig, detect_and_measure
from stages.measure.moments import adaptive_moments, adaptive_moments_of_stamps
from stages.measure.stamps import shift_kernels, stamps

from .psf_model import (
    MoffatField,
    OpticalAtmospherePsf,
    OpticalField,
    grid_spacing_for,
    n_polynomial_terms,
)

#: Catalog flags that exclude a source from PSF determination.
EXCLUDING_FLAGS = (
    "flag_saturated",
    "flag_cr",
    "flag_interpolated",
    "flag_bad",
    "flag_suspect",
    "flag_edge",
    "flag_blended",
    "flag_moments",
    "flag_kron",
)
#: FWHM / sigma of a Gaussian.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class PsfDeterminationConfig:
    """Settings of PSF star selection and fitting.

    Parameters
    ----------
    min_snr : float
        Smallest Kron-flux S/N of a PSF star.
    snr_cap : float
        Stars weigh ``min(S/N, snr_cap)**2`` in the fit and in the residual figures: their
        moments' noise scales as 1 / (S/N), down to the model's own accuracy floor.
    isolation_radius : float
        No other detection within this many pixels of a PSF star.
    size_tolerance : float
        Half-width of the stellar locus in log size (0.1: within about 10% of the locus).
    max_stars : int
        At most this many stars (the brightest) are used.
    validation_fraction : float
        Fraction of the selected stars reserved for validation.
    degree : int
        Polynomial degree of the atmospheric FWHM and ellipticity (lowered when stars are few).
    betas : tuple of float
        Moffat indices tried.
    max_iter : int
        Gauss-Newton iterations of the moment fit.
    stamp_half_size : int
        Half size of the stamps for moments and chi^2.
    kernel_size : int or None
        Kernel size; by default the odd size covering +-4.5 FWHM (25 to 75 pixels).
    grid_spacing : float
        Largest node step of the model's kernel cache (:class:`OpticalAtmospherePsf`); smaller
        where the PSF varies fast (:func:`stages.characterize.psf_model.grid_spacing_for`).
    seed : int
        Seed of the random choice of reserved stars.
    """

    min_snr: float = 50.0
    snr_cap: float = 300.0
    isolation_radius: float = 12.0
    size_tolerance: float = 0.1
    max_stars: int = 200
    validation_fraction: float = 0.2
    degree: int = 1
    betas: tuple[float, ...] = (2.5, 3.5, 4.5, 5.5)
    max_iter: int = 8
    stamp_half_size: int = 12
    kernel_size: int | None = None
    grid_spacing: float = 256.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DrpError(f"validation_fraction must be in [0, 1): {self.validation_fraction}")
        if self.degree < 0 or not self.betas or min(self.betas) <= 1.0:
            raise DrpError("PsfDeterminationConfig: degree must be >= 0 and betas > 1")


@dataclass
class PsfDeterminationResult:
    """The fitted PSF and how well it describes the stars.

    ``stars`` has one row per selected star whose moments were measured: ``sourceIndex`` (its
    row in the input catalog), ``x``, ``y``, ``reserved`` (validation star),
    ``used`` (kept in the final fit), measured and model sizes (``size``, ``modelSize``, pixels)
    and ellipticities (``e1``, ``e2``, ``modelE1``, ``modelE2``), and the residuals
    ``sizeResid`` (fractional, model / measured - 1), ``e1Resid``, ``e2Resid`` (model - measured),
    and ``snr`` (Kron S/N, capped at ``snr_cap``). The ``*_rms`` and ``*_mean`` figures are over
    the reserved stars, weighted by ``snr**2`` (so that they measure the model rather than the
    photon noise of the faintest stars), leaving out reserved ``outlier`` stars (size residual
    beyond 5 sigma of the fit stars' scatter and 2%: blends, transients on their hosts), which
    ``n_outliers`` counts.
    """

    psf: OpticalAtmospherePsf
    stars: Table
    beta: float
    chi2_by_beta: dict[float, float]
    size_resid_rms: float
    e1_resid_rms: float
    e2_resid_rms: float
    size_resid_mean: float

    @property
    def n_used(self) -> int:
        """Stars used in the final fit."""
        return int(self.stars["used"].sum())

    @property
    def n_reserved(self) -> int:
        """Stars reserved for validation."""
        return int(self.stars["reserved"].sum())

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures: beta, star counts, residuals on reserved stars, median FWHM."""
        x, y = self.psf.width / 2.0, self.psf.height / 2.0
        return {
            "beta": self.beta,
            "n_stars": len(self.stars),
            "n_used": self.n_used,
            "n_reserved": self.n_reserved,
            "n_outliers": int(self.stars["outlier"].sum()),
            "psf_size_resid": self.size_resid_rms,
            "psf_size_resid_mean": self.size_resid_mean,
            "psf_e1_resid": self.e1_resid_rms,
            "psf_e2_resid": self.e2_resid_rms,
            "fwhm_pixels": self.psf.fwhm(x, y),
        }


# ---------------------------------------------------------------------------------- selection
def select_psf_stars(catalog: Table, config: PsfDeterminationConfig | None = None) -> np.ndarray:
    """Boolean selection of PSF-star candidates in a catalog of :func:`detect_and_measure`.

    Unflagged (:data:`EXCLUDING_FLAGS`), Kron S/N >= ``min_snr``, isolated, and within
    ``size_tolerance`` (in log size) of the stellar locus: the densest window of the size
    distribution of the bright unflagged sources (stars are the smallest of them).
    """
    config = config or PsfDeterminationConfig()
    n = len(catalog)
    if n == 0:
        return np.zeros(0, bool)
    ok = np.ones(n, bool)
    for name in EXCLUDING_FLAGS:
        if name in catalog.colnames:
            ok &= ~np.asarray(catalog[name], bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.asarray(catalog["kronFlux"]) / np.asarray(catalog["kronFluxErr"])
    ok &= np.isfinite(snr) & (snr >= config.min_snr)
    xy = np.c_[catalog["x"], catalog["y"]]
    if n > 1:
        dist, _ = cKDTree(xy).query(xy, k=2)
        ok &= dist[:, 1] > config.isolation_radius
    size = _size(np.asarray(catalog["ixx"]), np.asarray(catalog["iyy"]), np.asarray(catalog["ixy"]))
    ok &= np.isfinite(size) & (size > 0)
    if not ok.any():
        return ok
    log_size = np.log(size[ok])
    window = config.size_tolerance
    counts = [(np.abs(log_size - s) <= window).sum() for s in log_size]
    # The densest window; among equally dense ones the smallest size (stars are the smallest).
    best = max(range(len(counts)), key=lambda k: (counts[k], -log_size[k]))
    members = np.abs(log_size - log_size[best]) <= window
    locus = np.median(log_size[members])
    ok[ok] = np.abs(log_size - locus) <= window
    if ok.sum() > config.max_stars:
        order = np.argsort(-np.where(ok, snr, -np.inf))
        ok[order[config.max_stars :]] = False
    return ok


def _size(ixx: np.ndarray, iyy: np.ndarray, ixy: np.ndarray) -> np.ndarray:
    det = ixx * iyy - ixy * ixy
    with np.errstate(invalid="ignore"):
        return np.where(det > 0, np.abs(det) ** 0.25, np.nan)


def _shape(moments: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Determinant radius and distortions of moments."""
    ixx, iyy, ixy = moments["ixx"], moments["iyy"], moments["ixy"]
    return _size(ixx, iyy, ixy), (ixx - iyy) / (ixx + iyy), 2.0 * ixy / (ixx + iyy)


# ------------------------------------------------------------------------------------ fitting
@dataclass
class _Stars:
    """Measured PSF stars: positions, sub-pixel offsets and moments."""

    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    data: np.ndarray
    variance: np.ndarray
    weight: np.ndarray


def _measure_stars(
    image: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    half: int,
    weight: np.ndarray,
) -> tuple[_Stars, np.ndarray]:
    """Adaptive moments of stars; returns the measurements and which stars succeeded."""
    moments = adaptive_moments(image, x, y, 2.0, half)
    ok = ~moments["failed"]
    cx, cy = moments["x"], moments["y"]
    size, e1, e2 = _shape(moments)
    ix, iy = np.rint(cx).astype(int), np.rint(cy).astype(int)
    stars = _Stars(
        cx,
        cy,
        size,
        e1,
        e2,
        stamps(image, ix, iy, half),
        stamps(variance, ix, iy, half),
        np.asarray(weight, dtype=float),
    )
    return stars, ok & np.isfinite(size)


def _subset(stars: _Stars, sel: np.ndarray) -> _Stars:
    return _Stars(*(getattr(stars, f)[sel] for f in _Stars.__dataclass_fields__))


def _crop(kernels: np.ndarray, half: int) -> np.ndarray:
    c = kernels.shape[-1] // 2
    return kernels[:, c - half : c + half + 1, c - half : c + half + 1]


def _rendered(psf: OpticalAtmospherePsf, stars: _Stars, half: int) -> np.ndarray:
    """The exact model at each star, at its sub-pixel offset, cropped to the stamps."""
    dx, dy = stars.x - np.rint(stars.x), stars.y - np.rint(stars.y)
    return _crop(psf.render_many(stars.x, stars.y, dx, dy), half)


def _model_shapes(kernels: np.ndarray, stars: _Stars) -> tuple[np.ndarray, ...]:
    dx, dy = stars.x - np.rint(stars.x), stars.y - np.rint(stars.y)
    return _shape(adaptive_moments_of_stamps(kernels, dx, dy, stars.size))


#: Beyond this many stars, model moments are interpolated from a grid of GRID_NODES^2 renders.
GRID_NODES = 4


def _model_shapes_at_stars(
    psf: OpticalAtmospherePsf, stars: _Stars, half: int
) -> tuple[np.ndarray, ...]:
    """Model size and ellipticities at the stars.

    Few stars: the model drawn at each star's position and sub-pixel offset. Many stars: drawn
    centred on a ``GRID_NODES`` x ``GRID_NODES`` grid over the detector and interpolated with
    bicubic splines (the moments vary smoothly; pixel phase changes them by under 1e-4), so
    that the cost does not grow with the number of stars.
    """
    if stars.x.size <= GRID_NODES * GRID_NODES:
        return _model_shapes(_rendered(psf, stars, half), stars)
    xn = np.linspace(0.0, psf.width - 1, GRID_NODES)
    yn = np.linspace(0.0, psf.height - 1, GRID_NODES)
    xx, yy = np.meshgrid(xn, yn)
    kernels = _crop(psf.render_many(xx.ravel(), yy.ravel()), half)
    size0 = np.full(kernels.shape[0], float(np.median(stars.size)))
    shapes = _shape(adaptive_moments_of_stamps(kernels, 0.0, 0.0, size0))
    out = []
    for values in shapes:
        spline = RectBivariateSpline(yn, xn, values.reshape(GRID_NODES, GRID_NODES), kx=3, ky=3)
        out.append(spline(stars.y, stars.x, grid=False))
    return tuple(out)


def default_kernel_size(fwhm: float) -> int:
    """Odd kernel size covering +-4.5 FWHM, between 25 and 75 pixels."""
    return int(min(75, max(25, 2 * math.ceil(4.5 * fwhm) + 1)))


def _fit_atmosphere(
    stars: _Stars,
    beta: float,
    optical: OpticalField | None,
    shape: tuple[int, int],
    degree: int,
    kernel_size: int,
    grid_spacing: float,
    max_iter: int,
    start: np.ndarray | None = None,
) -> tuple[OpticalAtmospherePsf, np.ndarray]:
    """Fit the Moffat atmosphere of index ``beta`` to the stars' moments (optics fixed).

    Returns the model and the boolean selection of stars kept after outlier clipping.
    """
    height, width = shape
    half = stars.data.shape[-1] // 2
    terms = MoffatField(beta, np.zeros((3, n_polynomial_terms(degree))), width, height).terms(
        stars.x, stars.y
    )
    if optical is not None:
        ofwhm, _, _ = optical.params(stars.x, stars.y)
        s2_opt = (ofwhm / FWHM_PER_SIGMA) ** 2 + 1.0 / 12.0
    else:
        s2_opt = np.full(stars.x.size, 1.0 / 12.0)
    keep = np.ones(stars.x.size, bool)
    if start is None:
        fwhm0 = FWHM_PER_SIGMA * np.sqrt(np.maximum(stars.size**2 - s2_opt, 0.3)) * 0.9
        targets = np.array([fwhm0, stars.e1, stars.e2])
        start = _lstsq(terms, targets, keep, stars.weight)
    coeffs = start
    for iteration in range(max_iter):
        atmosphere = MoffatField(beta, coeffs, width, height)
        psf = OpticalAtmospherePsf(atmosphere, optical, kernel_size, grid_spacing)
        size_m, e1_m, e2_m = _model_shapes_at_stars(psf, stars, half)
        s2_m = size_m**2
        gain = np.maximum(s2_m - s2_opt, 0.2 * s2_m)
        fwhm, e1, e2 = atmosphere.params(stars.x, stars.y)
        ratio = np.clip((gain + stars.size**2 - s2_m) / gain, 0.25, 4.0)
        targets = np.array(
            [
                fwhm * np.sqrt(ratio),
                e1 + (stars.e1 - e1_m) * s2_m / gain,
                e2 + (stars.e2 - e2_m) * s2_m / gain,
            ]
        )
        resid = size_m / stars.size - 1.0
        if iteration >= 2:
            # Clip at 4 sigma, sigma scaling as 1 / sqrt(weight) from the weighted MAD.
            centre = np.median(resid[keep])
            scaled = (resid - centre) * np.sqrt(stars.weight)
            scatter = 1.4826 * np.median(np.abs(scaled[keep])) / np.sqrt(stars.weight)
            keep = np.abs(resid - centre) <= np.maximum(4.0 * scatter, 0.01)
        new = _lstsq(terms, targets, keep, stars.weight)
        step = np.abs(new - coeffs).max()
        coeffs = new
        if step < 2e-4 and iteration >= 2:
            break
    atmosphere = MoffatField(beta, coeffs, width, height)
    spacing = grid_spacing_for(atmosphere, optical, grid_spacing)
    final = OpticalAtmospherePsf(atmosphere, optical, kernel_size, spacing)
    return final, keep


def _lstsq(
    terms: np.ndarray, targets: np.ndarray, keep: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    root = np.sqrt(weight[keep])
    a = terms[:, keep].T * root[:, None]
    return np.array([np.linalg.lstsq(a, t[keep] * root, rcond=None)[0] for t in targets])


def _outliers(resid: np.ndarray, weight: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Stars whose size residual is off by more than 5 sigma and 2%: sigma scales as
    ``1 / sqrt(weight)`` from the weighted MAD of the stars used in the fit."""
    scaled = resid * np.sqrt(weight)
    s0 = 1.4826 * np.median(np.abs(scaled[used] - np.median(scaled[used])))
    return np.abs(resid) > np.maximum(5.0 * s0 / np.sqrt(weight), 0.02)


#: The Moffat index is chosen on the pixels of at most this many stars (the highest S/N).
CHI2_STARS = 30


def _chi2(psf: OpticalAtmospherePsf, stars: _Stars, keep: np.ndarray) -> float:
    """Reduced chi^2 of the pixels of the (at most ``CHI2_STARS``) highest-S/N kept stars
    against the model (linear flux per star)."""
    half = stars.data.shape[-1] // 2
    ranked = np.flatnonzero(keep)[np.argsort(-stars.weight[keep], kind="stable")]
    keep = np.zeros(keep.size, bool)
    keep[ranked[:CHI2_STARS]] = True
    kernels = _rendered(psf, _subset(stars, keep), half)
    data, var = stars.data[keep], stars.variance[keep]
    good = var > 0
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    flux = (w * kernels * data).sum(axis=(1, 2)) / (w * kernels * kernels).sum(axis=(1, 2))
    resid = w * (data - flux[:, None, None] * kernels) ** 2
    return float(resid.sum() / max(good.sum() - keep.sum(), 1))


def _validate(
    psf: OpticalAtmospherePsf, stars: _Stars
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model size and ellipticities at stars from the cached kernels (as later stages use it)."""
    half = stars.data.shape[-1] // 2
    dx, dy = stars.x - np.rint(stars.x), stars.y - np.rint(stars.y)
    kernels = _crop(shift_kernels(psf.kernel_images(stars.x, stars.y), dx, dy), half)
    return _model_shapes(kernels, stars)


def _search_beta(
    stars: _Stars, optical: OpticalField | None, args: tuple, config: PsfDeterminationConfig
) -> tuple[dict[float, tuple[OpticalAtmospherePsf, np.ndarray]], dict[float, float]]:
    """Fit the atmosphere for Moffat indices of the grid, walking downhill in chi^2.

    The walk starts at the index of the grid nearest 3.5 (typical of the atmosphere), fits
    both neighbours and moves towards the better one while chi^2 decreases. Every index tried
    is fitted to convergence (from the best fit so far, which saves iterations), so that the
    chi^2 values compare models that are each as good as they can be: comparing a converged
    fit with a partly converged one favours the first (that picked 3.5 over a true 4.5 on
    some detectors and cost 23 mmag of PSF flux). Returns the fits and chi^2 by index.
    """
    grid = sorted(config.betas)
    fits: dict[float, tuple[OpticalAtmospherePsf, np.ndarray]] = {}
    chi2: dict[float, float] = {}

    def fit(k: int, start: np.ndarray | None) -> float:
        beta = grid[k]
        if beta not in chi2:
            fits[beta] = _fit_atmosphere(stars, beta, optical, *args, config.max_iter, start=start)
            chi2[beta] = _chi2(fits[beta][0], stars, fits[beta][1])
        return chi2[beta]

    best = min(range(len(grid)), key=lambda k: abs(grid[k] - 3.5))
    fit(best, None)
    for direction in (1, -1):
        k = best + direction
        while 0 <= k < len(grid):
            start = fits[grid[best]][0].atmosphere.coeffs
            if fit(k, start) >= chi2[grid[best]]:
                break
            best = k
            k += direction
    return fits, chi2


def determine_psf(
    exposure: Exposure,
    catalog: Table,
    optical: OpticalField | None,
    config: PsfDeterminationConfig | None = None,
) -> PsfDeterminationResult:
    """Determine the PSF of a background-subtracted exposure from the stars of its catalog.

    Parameters
    ----------
    exposure : repo.exposure.Exposure
        Calibrated, background-subtracted image with its variance.
    catalog : astropy.table.Table
        Its sources from :func:`stages.measure.measurement.detect_and_measure`.
    optical : OpticalField or None
        The optical part from the instrument model (:func:`optical_field`), or ``None`` for
        an atmosphere-only (empirical) model.
    config : PsfDeterminationConfig, optional
        Selection and fitting settings.

    Returns
    -------
    PsfDeterminationResult

    Raises
    ------
    repo.errors.DrpError
        Too few PSF stars for the fit.
    """
    config = config or PsfDeterminationConfig()
    selected = select_psf_stars(catalog, config)
    half = config.stamp_half_size
    snr = np.asarray(catalog["kronFlux"])[selected] / np.asarray(catalog["kronFluxErr"])[selected]
    stars, measured = _measure_stars(
        exposure.image,
        exposure.variance,
        np.asarray(catalog["x"])[selected],
        np.asarray(catalog["y"])[selected],
        half,
        np.minimum(snr, config.snr_cap) ** 2,
    )
    stars = _subset(stars, measured)
    source_index = np.flatnonzero(selected)[measured]
    n = stars.x.size
    if n < 3:
        raise DrpError(f"PSF determination: only {n} usable PSF stars (need at least 3)")
    rng = np.random.default_rng(config.seed)
    reserved = np.zeros(n, bool)
    n_reserved = int(round(config.validation_fraction * n)) if n >= 5 else 0
    reserved[rng.choice(n, size=n_reserved, replace=False)] = True
    fit_stars = _subset(stars, ~reserved)
    degree = config.degree
    while degree > 0 and fit_stars.x.size < 3 * n_polynomial_terms(degree):
        degree -= 1
    fwhm_guess = FWHM_PER_SIGMA * float(np.median(stars.size))
    kernel_size = config.kernel_size or default_kernel_size(fwhm_guess)
    shape = exposure.image.shape
    args = (shape, degree, kernel_size, config.grid_spacing)
    fits, chi2 = _search_beta(fit_stars, optical, args, config)
    beta = min(chi2, key=chi2.get)
    psf, keep = fits[beta]
    size_m, e1_m, e2_m = _validate(psf, stars)
    used = np.zeros(n, bool)
    used[np.flatnonzero(~reserved)[keep]] = True
    size_resid = size_m / stars.size - 1.0
    outlier = reserved & _outliers(size_resid, stars.weight, used)
    table = Table(
        {
            "sourceIndex": source_index,
            "x": stars.x,
            "y": stars.y,
            "snr": np.sqrt(stars.weight),
            "reserved": reserved,
            "used": used,
            "outlier": outlier,
            "size": stars.size,
            "e1": stars.e1,
            "e2": stars.e2,
            "modelSize": size_m,
            "modelE1": e1_m,
            "modelE2": e2_m,
            "sizeResid": size_resid,
            "e1Resid": e1_m - stars.e1,
            "e2Resid": e2_m - stars.e2,
        }
    )
    check = (reserved & ~outlier) if reserved.any() else used

    weight = stars.weight[check]

    def rms(values: np.ndarray) -> float:
        return float(np.sqrt(np.sum(weight * values[check] ** 2) / np.sum(weight)))

    return PsfDeterminationResult(
        psf=psf,
        stars=table,
        beta=beta,
        chi2_by_beta=chi2,
        size_resid_rms=rms(np.asarray(table["sizeResid"])),
        e1_resid_rms=rms(np.asarray(table["e1Resid"])),
        e2_resid_rms=rms(np.asarray(table["e2Resid"])),
        size_resid_mean=float(
            np.sum(weight * np.asarray(table["sizeResid"])[check]) / weight.sum()
        ),
    )


@dataclass
class Characterization:
    """The outcome of :func:`characterize`: the source catalog and the PSF determination."""

    catalog: Table
    psf_result: PsfDeterminationResult


def characterize(
    exposure: Exposure,
    optical: OpticalField | None,
    measurement_config: MeasurementConfig | None = None,
    psf_config: PsfDeterminationConfig | None = None,
) -> Characterization:
    """Single-frame characterization: detect and measure, determine the PSF, measure again.

    The first pass (no PSF) finds the PSF stars; the fitted model is set as ``exposure.psf``;
    the second pass adds PSF fluxes. ``exposure`` must be calibrated and background-subtracted.

    Parameters
    ----------
    exposure : repo.exposure.Exposure
        The image; its ``psf`` is replaced by the fitted model.
    optical : OpticalField or None
        The optical part of the PSF (:func:`optical_field`), or ``None``.
    measurement_config, psf_config : optional
        Settings of :func:`stages.measure.measurement.detect_and_measure` and :func:`determine_psf`.

    Returns
    -------
    Characterization

    Raises
    ------
    repo.errors.DrpError
        Too few PSF stars.
    """
    exposure.psf = None
    first = detect_and_measure(exposure, measurement_config)
    result = determine_psf(exposure, first, optical, psf_config)
    exposure.psf = result.psf
    return Characterization(detect_and_measure(exposure, measurement_config), result)


def optical_field(
    camera: Any, detector: int, band: str, shape: tuple[int, int], n_nodes: int = 13
) -> OpticalField | None:
    """The optical part of a detector's PSF from an instrument model, or ``None`` when the
    instrument has none (no ``optical_psf_params``, e.g. real DECam data)."""
    if not hasattr(camera, "optical_psf_params"):
        return None
    height, width = shape
    return OpticalField.from_camera(camera, detector, band, width, height, n_nodes)


__all__ = [
    "EXCLUDING_FLAGS",
    "Characterization",
    "PsfDeterminationConfig",
    "PsfDeterminationResult",
    "characterize",
    "default_kernel_size",
    "determine_psf",
    "optical_field",
    "select_psf_stars",
]
