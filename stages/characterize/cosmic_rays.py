"""Cosmic-ray detection that knows the PSF, and repair of the pixels it finds.

A cosmic ray deposits charge in a pixel without going through the optics, so it can be sharper
than the PSF allows; a star, however bright, cannot. The test (in the spirit of LSST's
``findCosmicRays``) compares each pixel with the mean of each pair of opposite neighbours
(horizontal, vertical and the two diagonals). For any source seen through a PSF of Gaussian
width ``s``, whatever its centring, the mean of a pair at distance ``d`` is at least
``r(d) = exp(-d^2 / 2 s^2)`` times the central value (for a Gaussian, exactly so for a centred
source; a wider or pixel-integrated profile is smoother still). A pixel is a cosmic ray when,
in at least one direction, ``r(d) * I - mean(pair)`` exceeds ``sharp_sigma`` times its noise,
and ``I`` is ``detect_sigma`` above the background. ``s`` is the PSF sigma times
``psf_margin`` (< 1), a safety margin for PSFs whose core is peakier than a Gaussian (a Moffat)
and for PSF variation across the detector.

Cosmic rays are rarely one pixel: tracks are a few pixels wide and their charge spreads to
fainter neighbours. Detection is therefore followed by growing: the pixels found are replaced by
an interpolation from the good pixels around them, and their neighbours are tested again against
the PSF with lower thresholds (``grow_sigma``), a few times. The neighbours' test still needs
them to be sharper than the PSF once the known cosmic ray is removed, so a false detection in a
star never spreads over the star.

The PSF size: :func:`find_cosmic_rays` takes it (the Gaussian sigma of the core, FWHM / 2.3548);
:func:`reject_cosmic_rays`, the pipeline's entry point, needs only a lower bound (the camera's
optical PSF, which the atmosphere can only broaden): a first pass with it finds the obvious hits,
:func:`estimate_psf_sigma` measures the core on the brightest compact sources of the repaired
image, and a second pass uses that. Found pixels are then repaired (:func:`repair_cosmic_rays`:
CR and INTRP planes, values interpolated from the good neighbours).

The sharpness test is evaluated only where a pixel is above the detection threshold, and the
growing only on neighbours of pixels found, with numpy fancy indexing; one pass costs about
0.05 s per megapixel, two passes with the repair 0.15-0.2 s (``benchmarks/bench_isr.py``, which
also runs astroscrappy on the same image: ~3.5 s per megapixel here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep
from scipy import ndimage

from repo.errors import DrpError
from repo.exposure import Exposure
from stages.isr.correction import fill_values
from stages.measure.moments import adaptive_moments_of_stamps
from stages.measure.stamps import stamps

#: Neighbour offsets (dy, dx) of the four directions tested and their distance (pixels).
DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))

#: Mask planes whose pixels are never called cosmic rays (their values are not sky + source).
EXCLUDED_PLANES = ("SAT", "BAD", "NO_DATA")


@dataclass(frozen=True)
class CosmicRayConfig:
    """Options of :func:`find_cosmic_rays`.

    Parameters
    ----------
    detect_sigma : float
        A cosmic-ray pixel is at least this many sigma above the background.
    sharp_sigma : float
        ... and sharper than the PSF by this many sigma in at least one direction.
    grow_sigma : float
        Both thresholds for the neighbours of pixels already found (growing step).
    grow_iterations : int
        Growing steps (each reaches one pixel further).
    psf_margin : float
        The PSF sigma is multiplied by this (<= 1) before computing the allowed sharpness.
    saturation_buffer : int
        Pixels within this distance of a saturated pixel are not tested.
    background_mesh : int
        Mesh size (pixels) of the quick background estimate.
    """

    detect_sigma: float = 5.0
    sharp_sigma: float = 4.0
    grow_sigma: float = 2.5
    grow_iterations: int = 3
    psf_margin: float = 0.8
    saturation_buffer: int = 2
    background_mesh: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.psf_margin <= 1.0:
            raise DrpError(f"CosmicRayConfig.psf_margin must be in (0, 1], got {self.psf_margin}")
        for name in ("detect_sigma", "sharp_sigma", "grow_sigma"):
            if not getattr(self, name) > 0:
                raise DrpError(f"CosmicRayConfig.{name} must be > 0")
        if self.grow_iterations < 0 or self.saturation_buffer < 0:
            raise DrpError("CosmicRayConfig.grow_iterations and saturation_buffer must be >= 0")


#: The default options.
DEFAULT_CR_CONFIG = CosmicRayConfig()


def psf_pair_ratios(psf_sigma: float) -> np.ndarray:
    """Lowest ratio of neighbour-pair mean to central value a PSF allows, per direction."""
    if not (math.isfinite(psf_sigma) and psf_sigma > 0):
        raise DrpError(f"PSF sigma must be finite and > 0, got {psf_sigma}")
    dist2 = np.array([dy * dy + dx * dx for dy, dx in DIRECTIONS], dtype=float)
    return np.exp(-dist2 / (2.0 * psf_sigma**2))


def sharper_than_psf(
    values: np.ndarray,
    variance: np.ndarray,
    ratios: np.ndarray,
    nsigma: float,
    ys: np.ndarray,
    xs: np.ndarray,
    invalid: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
) -> np.ndarray:
    """Which pixels ``(ys, xs)`` are sharper than the PSF allows by ``nsigma``.

    In at least one direction, ``r * I - mean(pair)`` must exceed ``nsigma`` times its noise
    (from ``variance``). ``values`` is background-subtracted; ``ratios`` come from
    :func:`psf_pair_ratios`; a direction whose pair touches an ``invalid`` pixel or the image
    border is not used. ``neighbours`` (default ``values``) supplies the pair's values.
    """
    neighbours = values if neighbours is None else neighbours
    ny, nx = values.shape
    centre = values[ys, xs].astype(np.float64)
    var_centre = variance[ys, xs].astype(np.float64)
    out = np.zeros(ys.size, dtype=bool)
    for (dy, dx), r in zip(DIRECTIONS, ratios, strict=True):
        y1, x1, y2, x2 = ys + dy, xs + dx, ys - dy, xs - dx
        inside = (y1 < ny) & (x1 >= 0) & (x1 < nx) & (y2 >= 0) & (x2 >= 0) & (x2 < nx)
        y1, x1 = np.where(inside, y1, ys), np.where(inside, x1, xs)
        y2, x2 = np.where(inside, y2, ys), np.where(inside, x2, xs)
        pair = 0.5 * (neighbours[y1, x1].astype(np.float64) + neighbours[y2, x2])
        var_pair = 0.25 * (variance[y1, x1].astype(np.float64) + variance[y2, x2])
        excess = r * centre - pair
        sharp = inside & (excess > 0)
        sharp &= excess * excess > nsigma * nsigma * (r * r * var_centre + var_pair)
        if invalid is not None:
            sharp &= ~(invalid[y1, x1] | invalid[y2, x2])
        out |= sharp
    return out


def _neighbours(
    ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct 8-connected neighbours (inside the image) of pixels ``(ys, xs)``."""
    ny, nx = shape
    dy, dx = np.mgrid[-1:2, -1:2]
    yy = (ys[:, None] + dy.ravel()[None, :]).ravel()
    xx = (xs[:, None] + dx.ravel()[None, :]).ravel()
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    flat = np.unique(yy[inside] * nx + xx[inside])
    return flat // nx, flat % nx


def _background(image: np.ndarray, excluded: np.ndarray, mesh: int) -> np.ndarray:
    data = np.ascontiguousarray(image, dtype=np.float32)
    mesh = max(8, min(mesh, *data.shape))
    bkg = sep.Background(data, mask=excluded, bw=mesh, bh=mesh, fw=3, fh=3)
    return bkg.back()


def _excluded(exposure: Exposure, config: CosmicRayConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pixels the search ignores (``invalid``: EXCLUDED_PLANES) and those it also keeps out of
    the background and of the candidates (``excluded``: plus the ends of bleed trails)."""
    invalid = (exposure.mask & exposure.bits(*EXCLUDED_PLANES)) != 0
    excluded = invalid.copy()
    sat = (exposure.mask & exposure.bit("SAT")) != 0
    if config.saturation_buffer and sat.any():
        # Bleed trails end in partly filled pixels along their column: leave those alone.
        column = np.ones((2 * config.saturation_buffer + 1, 1), dtype=bool)
        excluded |= ndimage.binary_dilation(sat, column)
    return invalid, excluded


def find_cosmic_rays(
    exposure: Exposure,
    psf_sigma_pix: float,
    config: CosmicRayConfig = DEFAULT_CR_CONFIG,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels hit by cosmic rays: sharper than the PSF allows (see the module docstring).

    Parameters
    ----------
    exposure : repo.exposure.Exposure
        An ISR-processed exposure (image and variance in electrons; SAT, BAD and NO_DATA
        pixels are left alone).
    psf_sigma_pix : float
        Gaussian sigma of the PSF core (FWHM / 2.3548, pixels); the narrowest over the detector
        is the safe choice (:func:`estimate_psf_sigma` measures it).
    config : CosmicRayConfig
        Thresholds and growing.
    background : numpy.ndarray, optional
        The image's background, if already known (:func:`reject_cosmic_rays` measures it once
        for both passes); measured with sep otherwise.

    Returns
    -------
    numpy.ndarray
        Boolean mask of cosmic-ray pixels.
    """
    ratios = psf_pair_ratios(float(psf_sigma_pix) * config.psf_margin)
    image = exposure.image.astype(np.float32, copy=False)
    variance = np.clip(exposure.variance.astype(np.float32, copy=False), 1e-6, None)
    invalid, excluded = _excluded(exposure, config)
    if background is None:
        background = _background(image, excluded, config.background_mesh)
    values = image - background
    ys, xs = np.nonzero(
        (values > 0) & (values * values > config.detect_sigma**2 * variance) & ~excluded
    )
    sharp = sharper_than_psf(values, variance, ratios, config.sharp_sigma, ys, xs, invalid)
    found = np.zeros(image.shape, dtype=bool)
    found[ys[sharp], xs[sharp]] = True
    grow2 = config.grow_sigma**2
    for _ in range(config.grow_iterations):
        fy, fx = np.nonzero(found)
        if fy.size == 0:
            break
        ry, rx = _neighbours(fy, fx, image.shape)
        keep = ~found[ry, rx] & ~excluded[ry, rx]
        ry, rx = ry[keep], rx[keep]
        v = values[ry, rx]
        keep = (v > 0) & (v * v > grow2 * variance[ry, rx])
        ry, rx = ry[keep], rx[keep]
        if ry.size == 0:
            break
        # The neighbours as they would be without the cosmic rays found so far, interpolated
        # from pixels that are neither found nor candidates.
        candidates = found.copy()
        candidates[ry, rx] = True
        cleaned = values.copy()
        cleaned[fy, fx] = fill_values(values, candidates, fy, fx)
        new = sharper_than_psf(
            values, variance, ratios, config.grow_sigma, ry, rx, invalid, neighbours=cleaned
        )
        if not new.any():
            break
        found[ry[new], rx[new]] = True
    return found


def estimate_psf_sigma(
    exposure: Exposure,
    min_sigma: float,
    detect_sigma: float = 30.0,
    max_stars: int = 30,
    stamp_half: int = 7,
    core_factor: float = 0.9,
    background: np.ndarray | None = None,
) -> float:
    """The PSF core's Gaussian sigma, measured on the brightest compact sources.

    Sources ``detect_sigma`` above the background and away from masked pixels get the adaptive
    second-moment sigma ``det(C)**0.25`` of a stamp around their peak
    (:func:`stages.measure.moments.adaptive_moments_of_stamps`, all stamps at once); the
    estimate is ``core_factor`` times the median over the sharpest half of the ``max_stars``
    brightest (stars are the most compact sources once cosmic rays are repaired). The factor
    converts the adaptive sigma, which Moffat-like wings inflate by about 10%, into the width
    of the core that the cosmic-ray test relies on. The result is never less than ``min_sigma``
    (the optical PSF alone, the sharpest the image can be), which is also returned when no
    source is usable. ``background`` is the image's background if known (else measured).
    """
    image = exposure.image.astype(np.float32)
    masked = (exposure.mask & exposure.bits(*EXCLUDED_PLANES, "CR")) != 0
    if background is None:
        background = _background(image, masked, 64)
    data = image - background
    err = np.sqrt(np.clip(exposure.variance.astype(np.float32), 1e-6, None))
    try:
        objects = sep.extract(data, detect_sigma, err=err, mask=masked, minarea=5)
    except Exception as exc:  # sep raises plain Exceptions (pixel stack, object limits)
        raise DrpError(f"PSF size estimate: source extraction failed ({exc})") from None
    ny, nx = data.shape
    h = stamp_half
    x, y = objects["xpeak"].astype(int), objects["ypeak"].astype(int)
    inside = (x >= h) & (x < nx - h) & (y >= h) & (y < ny - h) & (objects["flag"] == 0)
    order = np.argsort(objects["flux"][inside])[::-1][:max_stars]
    xs, ys = x[inside][order], y[inside][order]
    clean = ~stamps(masked.astype(np.float64), xs, ys, h).any(axis=(1, 2))
    moments = adaptive_moments_of_stamps(
        stamps(data.astype(np.float64), xs[clean], ys[clean], h), 0.0, 0.0, 2.0
    )
    ok = ~moments["failed"]
    det = moments["ixx"][ok] * moments["iyy"][ok] - moments["ixy"][ok] ** 2
    sigmas = det[det > 0] ** 0.25
    if not sigmas.size:
        return float(min_sigma)
    sharpest = np.sort(sigmas)[: max(1, (len(sigmas) + 1) // 2)]
    return float(max(min_sigma, core_factor * np.median(sharpest)))


def reject_cosmic_rays(
    exposure: Exposure,
    min_psf_sigma: float,
    config: CosmicRayConfig = DEFAULT_CR_CONFIG,
) -> tuple[np.ndarray, float]:
    """Find and repair cosmic rays in two passes, learning the PSF size in between.

    Pass 1 uses ``min_psf_sigma`` (a lower bound, such as the camera's optical PSF: safe for
    stars, less sensitive); the PSF size is then measured on the repaired image
    (:func:`estimate_psf_sigma`), and pass 2, on the original pixels, uses it. Modifies ``exposure`` in place (CR and
    INTRP planes, repaired pixels) and returns the cosmic-ray mask and the PSF sigma used.
    """
    image = exposure.image.astype(np.float32, copy=False)
    background = _background(image, _excluded(exposure, config)[1], config.background_mesh)
    first = find_cosmic_rays(exposure, min_psf_sigma, config, background)
    scratch = Exposure(
        image=exposure.image.copy(), mask=exposure.mask.copy(), variance=exposure.variance.copy()
    )
    repair_cosmic_rays(scratch, first)
    sigma = estimate_psf_sigma(scratch, min_psf_sigma, background=background)
    found = find_cosmic_rays(exposure, sigma, config, background) | first
    repair_cosmic_rays(exposure, found)
    return found, sigma


def repair_cosmic_rays(
    exposure: Exposure, cosmic_rays: np.ndarray, interpolation_sigma: float = 1.0
) -> int:
    """Set the CR plane on ``cosmic_rays`` and replace those pixels by an interpolation.

    Image and variance of the pixels are interpolated from the good pixels around them
    (:func:`stages.isr.correction.fill_values`, a Gaussian of ``interpolation_sigma`` pixels);
    the INTRP plane is set too. Modifies ``exposure`` in place and returns the number of pixels.
    """
    cosmic_rays = np.asarray(cosmic_rays, dtype=bool)
    if cosmic_rays.shape != exposure.shape:
        raise DrpError(
            f"cosmic-ray mask has shape {cosmic_rays.shape}, the exposure {exposure.shape}"
        )
    n = int(cosmic_rays.sum())
    if n == 0:
        return 0
    exposure.mask[cosmic_rays] |= exposure.bits("CR", "INTRP")
    ys, xs = np.nonzero(cosmic_rays)
    exposure.image[ys, xs] = fill_values(exposure.image, cosmic_rays, ys, xs, interpolation_sigma)
    exposure.variance[ys, xs] = fill_values(
        exposure.variance, cosmic_rays, ys, xs, interpolation_sigma
    )
    return n
