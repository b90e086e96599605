"""Source detection and measurement on a calibrated, background-subtracted image (sep).

The story of :func:`detect_and_measure`: detect sources with sep (threshold in units of the
noise from the variance plane, matched filter, sep's multi-threshold deblending), then measure
each source with functions named for what they measure:

* :func:`kron_fluxes` -- SExtractor's AUTO flux: ellipse of ``max(k * kron_radius, r_min)``
  times (a, b);
* :func:`windowed_centroids` -- SExtractor's XWIN/YWIN (``sep.winpos``, window from the
  half-light radius);
* :func:`aperture_fluxes` -- circular apertures (LSST names ``ap09Flux`` for radius 9 pixels);
* :func:`stages.measure.psf_flux.psf_fluxes` -- linear fit of the PSF model, shifted to the source position;
* :func:`stages.measure.moments.adaptive_moments` -- elliptical-Gaussian-weighted second moments (LSST ``ixx`` ...);
* :func:`pixel_flags` -- mask planes found in each source's footprint and centre.

Every flux is in the image's units (instFlux); conversion to nJy is the photometric
calibration's job. :data:`SOURCE_COLUMNS` documents every output column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from astropy.table import Table

from repo.errors import DrpError
from repo.exposure import Exposure

from .moments import adaptive_moments
from .psf_flux import psf_fluxes
from .stamps import stamps

#: SExtractor's default 3x3 detection filter ("all-ground", FWHM 2 pixels).
DEFAULT_FILTER = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])


#: Flag column -> mask planes whose presence in the footprint sets it.
FOOTPRINT_FLAG_PLANES: dict[str, tuple[str, ...]] = {
    "saturated": ("SAT",),
    "cr": ("CR",),
    "interpolated": ("INTRP",),
    "bad": ("BAD",),
    "suspect": ("SUSPECT",),
    "edge": ("EDGE", "NO_DATA"),
}


@dataclass(frozen=True)
class MeasurementConfig:
    """Detection and measurement settings (defaults follow SExtractor and LSST practice).

    Parameters
    ----------
    threshold : float
        Detection threshold in units of the per-pixel noise (sqrt of the variance plane).
    min_area : int
        Minimum number of connected pixels above threshold.
    filter_kernel : tuple of tuple of float or None
        Detection filter (SExtractor's 3x3 default); ``None`` for none.
    filter_type : str
        ``'matched'`` or ``'conv'`` (see ``sep.extract``).
    deblend_nthresh, deblend_cont : int, float
        sep's deblending sub-thresholds and minimum contrast (1.0 disables deblending).
    clean, clean_param : bool, float
        SExtractor's cleaning of spurious detections in the wings of bright ones; off by
        default: with the variance plane in the threshold, wing noise is not detected, and
        cleaning drops real faint stars 30 pixels from brighter ones.
    aperture_radii : tuple of float
        Radii (pixels) of the circular apertures; column ``apNNFlux`` for radius NN (rounded).
    aperture_subpix : int
        Sub-pixel sampling of the apertures (0: exact overlap; SExtractor uses 5).
    kron_factor, kron_min_radius : float
        SExtractor's PHOT_AUTOPARAMS: the aperture is the ellipse (a, b, theta) scaled by
        ``max(kron_factor * kron_radius, kron_min_radius)``.
    kron_subpix : int
        Sub-pixel sampling of the Kron aperture (SExtractor uses none: 1).
    moments_half_size : int
        Half size of the stamps used for adaptive moments.
    mask_planes : tuple of str
        Planes whose pixels are ignored (detection and photometry). ``BAD`` pixels that ISR did
        not interpolate (no ``INTRP``) are ignored too; interpolated ones are used.
    aperture_centroid : str
        Centre of the circular apertures: ``'windowed'`` (``x``, ``y``; LSST practice) or
        ``'isophotal'`` (``xPeak``, ``yPeak``; SExtractor's FLUX_APER).
    max_sources : int
        Largest number of sources accepted (sep's object stack).
    """

    threshold: float = 5.0
    min_area: int = 5
    filter_kernel: tuple[tuple[float, ...], ...] | None = tuple(map(tuple, DEFAULT_FILTER))
    filter_type: str = "matched"
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    clean: bool = False
    clean_param: float = 1.0
    aperture_radii: tuple[float, ...] = (3.0, 6.0, 9.0, 12.0, 17.0, 25.0)
    aperture_subpix: int = 0
    kron_factor: float = 2.5
    kron_min_radius: float = 3.5
    kron_subpix: int = 1
    moments_half_size: int = 15
    mask_planes: tuple[str, ...] = ("NO_DATA",)
    max_sources: int = 100_000
    aperture_centroid: str = "windowed"

    def __post_init__(self) -> None:
        if not (self.threshold > 0 and self.min_area >= 1):
            raise DrpError("MeasurementConfig: threshold must be > 0 and min_area >= 1")
        if self.aperture_centroid not in ("windowed", "isophotal"):
            raise DrpError(
                f"MeasurementConfig: unknown aperture_centroid {self.aperture_centroid!r}"
            )
        if self.filter_type not in ("matched", "conv"):
            raise DrpError(f"MeasurementConfig: unknown filter_type {self.filter_type!r}")
        if not self.aperture_radii or min(self.aperture_radii) <= 0:
            raise DrpError("MeasurementConfig: aperture_radii must be positive")
        names = [aperture_name(r) for r in self.aperture_radii]
        if len(set(names)) != len(names):
            raise DrpError(f"MeasurementConfig: aperture radii give duplicate names {names}")


def aperture_name(radius: float) -> str:
    """Column prefix of an aperture of ``radius`` pixels: ``ap09`` for 9, ``ap05`` for 5.4."""
    return f"ap{int(round(radius)):02d}"


#: Output columns: name -> (unit, description); aperture columns are added per radius.
SOURCE_COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("", "source number in this catalog (1-based, as the segmentation map)"),
    "x": ("pix", "windowed centroid x (0-based; sep.winpos, SExtractor XWIN_IMAGE - 1)"),
    "y": ("pix", "windowed centroid y (0-based)"),
    "xErr": ("pix", "1-sigma error of x: sqrt(2 ixx) / S/N (S/N of psfFlux, else kronFlux)"),
    "yErr": ("pix", "1-sigma error of y: sqrt(2 iyy) / S/N"),
    "xPeak": ("pix", "isophotal barycentre x from detection (0-based)"),
    "yPeak": ("pix", "isophotal barycentre y from detection (0-based)"),
    "npix": ("pix", "number of pixels in the footprint (segmentation map)"),
    "peakValue": ("instFlux", "peak of the (unfiltered) footprint"),
    "isoFlux": ("instFlux", "sum of the footprint's pixels above threshold"),
    "a": ("pix", "isophotal semi-major axis (rms along the major axis)"),
    "b": ("pix", "isophotal semi-minor axis"),
    "theta": ("rad", "position angle of the major axis from +x towards +y"),
    "kronRadius": ("", "first-moment Kron radius in units of (a, b)"),
    "kronFlux": ("instFlux", "flux in the Kron ellipse max(2.5 kronRadius, 3.5) x (a, b)"),
    "kronFluxErr": ("instFlux", "1-sigma error of kronFlux from the variance plane"),
    "fluxRadius": ("pix", "half-light radius (of kronFlux)"),
    "psfFlux": ("instFlux", "flux from a linear fit of the PSF model at (x, y)"),
    "psfFluxErr": ("instFlux", "1-sigma error of psfFlux from the variance plane"),
    "psfChi2": ("", "reduced chi^2 of the PSF fit within 2 PSF FWHM"),
    "ixx": ("pix2", "adaptive second moment <x x> (elliptical Gaussian weight)"),
    "iyy": ("pix2", "adaptive second moment <y y>"),
    "ixy": ("pix2", "adaptive second moment <x y>"),
    "flag_blended": ("", "deblended from a blend (sep OBJ_MERGED)"),
    "flag_saturated": ("", "footprint contains saturated pixels (SAT)"),
    "flag_saturatedCenter": ("", "saturated pixel in the central 3x3"),
    "flag_cr": ("", "footprint contains cosmic-ray pixels (CR)"),
    "flag_crCenter": ("", "cosmic-ray pixel in the central 3x3"),
    "flag_interpolated": ("", "footprint contains interpolated pixels (INTRP)"),
    "flag_interpolatedCenter": ("", "interpolated pixel in the central 3x3"),
    "flag_bad": ("", "footprint contains bad pixels (BAD)"),
    "flag_suspect": ("", "footprint contains suspect pixels (SUSPECT)"),
    "flag_edge": ("", "footprint or measurement apertures reach the edge or NO_DATA"),
    "flag_psfFlux": ("", "PSF flux failed or was measured on a truncated stamp"),
    "flag_kron": ("", "Kron radius or flux failed (truncated or undefined)"),
    "flag_moments": ("", "adaptive moments did not converge"),
}


def _aperture_columns(radii: tuple[float, ...]) -> dict[str, tuple[str, str]]:
    cols = {}
    for r in radii:
        name = aperture_name(r)
        cols[f"{name}Flux"] = ("instFlux", f"flux in a circular aperture of radius {r:g} pixels")
        cols[f"{name}FluxErr"] = ("instFlux", f"1-sigma error of {name}Flux")
        cols[f"{name}Flag"] = ("", f"aperture of radius {r:g} truncated or has masked pixels")
    return cols


def _native(array: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """A C-contiguous native-byte-order copy (sep needs one)."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("="))


# ------------------------------------------------------------------------------------ detection
def detect_sources(
    image: np.ndarray,
    variance: np.ndarray,
    ignore: np.ndarray | None = None,
    config: MeasurementConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Detect sources with sep on a background-subtracted image.

    Parameters
    ----------
    image, variance : numpy.ndarray
        Background-subtracted image and its variance (same shape).
    ignore : numpy.ndarray of bool, optional
        Pixels to ignore (set to zero, infinite noise).
    config : MeasurementConfig, optional
        Threshold, filter and deblending settings.

    Returns
    -------
    objects : numpy.ndarray
        sep's structured array, one row per source (after deblending).
    segmentation : numpy.ndarray
        Segmentation map: pixel value ``k`` belongs to ``objects[k - 1]``, 0 to none.
    """
    config = config or MeasurementConfig()
    kernel = None if config.filter_kernel is None else np.array(config.filter_kernel, float)
    sep.set_extract_pixstack(max(300_000, image.size))
    sep.set_sub_object_limit(4096)
    try:
        objects, segmentation = sep.extract(
            _native(image),
            config.threshold,
            var=_native(variance),
            mask=None if ignore is None else _native(ignore, np.uint8),
            minarea=config.min_area,
            filter_kernel=kernel,
            filter_type=config.filter_type,
            deblend_nthresh=config.deblend_nthresh,
            deblend_cont=config.deblend_cont,
            clean=config.clean,
            clean_param=config.clean_param,
            segmentation_map=True,
        )
    except Exception as exc:  # sep raises bare Exception with the C library's message
        raise DrpError(f"source detection failed: {exc}") from exc
    if len(objects) > config.max_sources:
        raise DrpError(f"source detection found {len(objects)} > {config.max_sources} sources")
    return objects, segmentation


# ---------------------------------------------------------------------------------- photometry
def kron_fluxes(
    image: np.ndarray,
    variance: np.ndarray,
    objects: np.ndarray,
    ignore: np.ndarray | None = None,
    kron_factor: float = 2.5,
    kron_min_radius: float = 3.5,
    subpix: int = 1,
) -> dict[str, np.ndarray]:
    """SExtractor's AUTO flux in the ellipse ``max(kron_factor * r_k, kron_min_radius) (a, b)``.

    Returns ``kronRadius`` (units of a, b), ``kronFlux``, ``kronFluxErr`` and ``flag_kron``.
    """
    image, variance = _native(image), _native(variance)
    mask = None if ignore is None else _native(ignore, np.uint8)
    x, y = objects["x"], objects["y"]
    a, b, theta = objects["a"], objects["b"], objects["theta"]
    # a degenerate shape (b = 0, as sep gives a one-pixel-wide detection) is no ellipse: sep
    # refuses the whole call, so such sources get a unit circle and the flag
    shaped = np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (b > 0) & (a >= b)
    a, b, theta = np.where(shaped, a, 1.0), np.where(shaped, b, 1.0), np.where(shaped, theta, 0.0)
    radius, rflag = sep.kron_radius(image, x, y, a, b, theta, 6.0, mask=mask)
    scale = np.maximum(kron_factor * radius, kron_min_radius)
    bad = ~(scale > 0) | ~shaped
    scale = np.where(bad, 1.0, scale)
    flux, err, fflag = sep.sum_ellipse(
        image, x, y, a, b, theta, r=scale, var=variance, mask=mask, subpix=subpix
    )
    flux = np.where(bad, np.nan, flux)
    err = np.where(bad, np.nan, err)
    return {
        "kronRadius": radius,
        "kronFlux": flux,
        "kronFluxErr": err,
        "flag_kron": bad | ((rflag | fflag) & sep.APER_TRUNC != 0),
    }


def windowed_centroids(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    half_light_radius: np.ndarray,
    ignore: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SExtractor's windowed centroid: Gaussian window of sigma ``2 / 2.35 * r_half``.

    Returns ``(x, y, failed)``; failed centroids keep the input position.
    """
    sig = 2.0 / 2.35 * np.where(half_light_radius > 0, half_light_radius, 1.0)
    mask = None if ignore is None else _native(ignore, np.uint8)
    xw, yw, flag = sep.winpos(_native(image), x, y, sig, mask=mask)
    failed = (flag != 0) | ~np.isfinite(xw) | ~np.isfinite(yw) | (np.hypot(xw - x, yw - y) > 3)
    return np.where(failed, x, xw), np.where(failed, y, yw), failed


def aperture_fluxes(
    image: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radii: tuple[float, ...],
    ignore: np.ndarray | None = None,
    subpix: int = 5,
) -> dict[str, np.ndarray]:
    """Circular-aperture fluxes, errors and flags: columns ``apNNFlux``, ``apNNFluxErr``,
    ``apNNFlag`` (aperture off the image or holding ignored pixels; sep scales the sum over the
    pixels kept by the aperture's area over their area)."""
    image, variance = _native(image), _native(variance)
    mask = None if ignore is None else _native(ignore, np.uint8)
    out = {}
    for r in radii:
        name = aperture_name(r)
        flux, err, flag = sep.sum_circle(image, x, y, r, var=variance, mask=mask, subpix=subpix)
        out[f"{name}Flux"] = flux
        out[f"{name}FluxErr"] = err
        out[f"{name}Flag"] = flag & (sep.APER_TRUNC | sep.APER_HASMASKED) != 0
    return out


def centroid_errors(
    fluxes: dict[str, np.ndarray], moments: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Centroid errors ``sqrt(2 ixx) / S/N`` and ``sqrt(2 iyy) / S/N``.

    Exact for the maximum-likelihood centroid of a Gaussian of covariance ``(ixx, iyy)`` whose
    flux is measured with signal-to-noise S/N by its optimal (PSF) weight; the S/N is that of
    ``psfFlux`` when it was measured, else of ``kronFlux``. NaN where the S/N is not positive.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = fluxes["psfFlux"] / fluxes["psfFluxErr"]
        snr = np.where(np.isfinite(snr), snr, fluxes["kronFlux"] / fluxes["kronFluxErr"])
        snr = np.where(snr > 0, snr, np.nan)
        return np.sqrt(2.0 * moments["ixx"]) / snr, np.sqrt(2.0 * moments["iyy"]) / snr


# --------------------------------------------------------------------------------------- flags
def footprint_masks(mask: np.ndarray, segmentation: np.ndarray, n_sources: int) -> np.ndarray:
    """Bitwise OR of the mask over each source's footprint (``n_sources`` values)."""
    labels = segmentation.ravel()
    inside = labels > 0
    out = np.zeros(n_sources, dtype=np.int64)
    if inside.any():
        np.bitwise_or.at(out, labels[inside] - 1, mask.ravel()[inside].astype(np.int64))
    return out


def center_masks(mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bitwise OR of the mask over the 3x3 pixels around each position."""
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    cut = stamps(mask.astype(np.float64), ix, iy, 1).astype(np.int64)
    return np.bitwise_or.reduce(cut.reshape(len(ix), -1), axis=1)


def pixel_flags(
    exposure: Exposure, segmentation: np.ndarray, x: np.ndarray, y: np.ndarray
) -> dict[str, np.ndarray]:
    """Flags from mask planes in each source's footprint (``flag_<name>``) and centre
    (``flag_<name>Center`` for saturated, cr and interpolated); planes the exposure lacks are
    ignored."""
    footprint = footprint_masks(exposure.mask, segmentation, len(x))
    centre = center_masks(exposure.mask, x, y)
    out = {}
    for name, planes in FOOTPRINT_FLAG_PLANES.items():
        bits = exposure.bits(*[p for p in planes if p in exposure.mask_planes])
        out[f"flag_{name}"] = footprint & bits != 0
        if name in ("saturated", "cr", "interpolated"):
            out[f"flag_{name}Center"] = centre & bits != 0
    return out


# ---------------------------------------------------------------------------------------- main
def ignored_pixels(exposure: Exposure, planes: tuple[str, ...]) -> np.ndarray | None:
    """Pixels to leave out of detection and photometry: those in ``planes``, and ``BAD`` pixels
    not interpolated by ISR (``BAD`` without ``INTRP``); ``None`` when there are none."""
    mask = exposure.mask
    known = [p for p in planes if p in exposure.mask_planes]
    ignore = (mask & exposure.bits(*known)) != 0 if known else np.zeros(mask.shape, bool)
    if "BAD" in exposure.mask_planes and "INTRP" in exposure.mask_planes:
        ignore |= ((mask & exposure.bit("BAD")) != 0) & ((mask & exposure.bit("INTRP")) == 0)
    return ignore if ignore.any() else None


def detect_and_measure(exposure: Exposure, config: MeasurementConfig | None = None) -> Table:
    """Detect and measure the sources of a background-subtracted exposure.

    Parameters
    ----------
    exposure : repo.exposure.Exposure
        Calibrated, background-subtracted image with mask and variance; its ``psf`` (if any)
        gives the PSF fluxes (NaN and ``flag_psfFlux`` without one).
    config : MeasurementConfig, optional
        Detection and measurement settings.

    Returns
    -------
    astropy.table.Table
        One row per source, columns of :data:`SOURCE_COLUMNS` plus the aperture columns, with
        units and descriptions; fluxes in the image's units (instFlux).
    """
    config = config or MeasurementConfig()
    image = _native(exposure.image)
    variance = _native(exposure.variance)
    ignore = ignored_pixels(exposure, config.mask_planes)
    objects, segmentation = detect_sources(image, variance, ignore, config)
    n = len(objects)
    columns: dict[str, np.ndarray] = {
        "id": np.arange(1, n + 1, dtype=np.int64),
        "xPeak": objects["x"].astype(float),
        "yPeak": objects["y"].astype(float),
        "npix": objects["npix"].astype(np.int64),
        "peakValue": objects["peak"].astype(float),
        "isoFlux": objects["flux"].astype(float),
        "a": objects["a"].astype(float),
        "b": objects["b"].astype(float),
        "theta": objects["theta"].astype(float),
    }
    if n:
        columns.update(measure_sources(exposure, objects, segmentation, ignore, config))
    else:
        for name in SOURCE_COLUMNS:
            columns.setdefault(name, np.zeros(0, bool if name.startswith("flag") else float))
        for name in _aperture_columns(config.aperture_radii):
            columns[name] = np.zeros(0, bool if name.endswith("Flag") else float)
    return _as_table(columns, config)


def measure_psf_fluxes(
    catalog: Table, exposure: Exposure, config: MeasurementConfig | None = None
) -> Table:
    """A copy of a :func:`detect_and_measure` catalog with PSF fluxes from ``exposure.psf``.

    The sources must have been measured on this exposure's pixels (``icSrc`` on ``icExp``): the
    PSF is fitted at their centroids ``x, y``, ignoring the pixels of ``config.mask_planes``,
    the centroid errors follow the PSF flux's S/N, and every other column is kept. The result equals :func:`detect_and_measure` run again with
    the PSF set, without detecting and measuring everything a second time.

    Raises :class:`DrpError` if the exposure has no PSF or the catalog no centroids.
    """
    config = config or MeasurementConfig()
    if exposure.psf is None:
        raise DrpError("measure_psf_fluxes: the exposure has no PSF")
    needed = ("x", "y", "psfFlux", "psfFluxErr", "psfChi2", "flag_psfFlux", "xErr", "yErr")
    missing = [c for c in needed if c not in catalog.colnames]
    if missing:
        raise DrpError(f"measure_psf_fluxes: the catalog has no {missing}")
    out = catalog.copy()
    if len(catalog) == 0:
        return out
    ignore = ignored_pixels(exposure, config.mask_planes)
    fit = psf_fluxes(
        _native(exposure.image),
        _native(exposure.variance),
        np.asarray(catalog["x"], float),
        np.asarray(catalog["y"], float),
        exposure.psf,
        ignore,
    )
    for name, values in fit.items():
        out[name][:] = values
    # Centroid errors scale with the S/N of the PSF flux once there is one.
    columns = {name: np.asarray(out[name], float) for name in ("psfFlux", "psfFluxErr",
               "kronFlux", "kronFluxErr", "ixx", "iyy")}  # fmt: skip
    out["xErr"][:], out["yErr"][:] = centroid_errors(columns, columns)
    return out


def measure_sources(
    exposure: Exposure,
    objects: np.ndarray,
    segmentation: np.ndarray,
    ignore: np.ndarray | None,
    config: MeasurementConfig,
) -> dict[str, np.ndarray]:
    """Every measurement of :func:`detect_and_measure` for detected ``objects``."""
    image = _native(exposure.image)
    variance = _native(exposure.variance)
    out = kron_fluxes(
        image,
        variance,
        objects,
        ignore,
        config.kron_factor,
        config.kron_min_radius,
        config.kron_subpix,
    )
    normflux = np.where(out["kronFlux"] > 0, out["kronFlux"], objects["flux"])
    rmax = np.maximum(6.0 * objects["a"], 3.0)
    half_light, _ = sep.flux_radius(
        image,
        objects["x"],
        objects["y"],
        rmax,
        0.5,
        normflux=normflux,
        mask=None if ignore is None else _native(ignore, np.uint8),
        subpix=5,
    )
    out["fluxRadius"] = half_light
    x, y, _ = windowed_centroids(image, objects["x"], objects["y"], half_light, ignore)
    out["x"], out["y"] = x, y
    if config.aperture_centroid == "isophotal":
        ax, ay = objects["x"], objects["y"]
    else:
        ax, ay = x, y
    out.update(
        aperture_fluxes(
            image, variance, ax, ay, config.aperture_radii, ignore, config.aperture_subpix
        )
    )
    if exposure.psf is not None:
        fit = psf_fluxes(image, variance, x, y, exposure.psf, ignore)
    else:
        nan = np.full(len(x), np.nan)
        fit = {"psfFlux": nan, "psfFluxErr": nan, "psfChi2": nan, "flag_psfFlux": np.isnan(nan)}
    out.update(fit)
    sigma0 = np.clip(np.sqrt(objects["a"] * objects["b"]), 1.0, config.moments_half_size / 3)
    moments = adaptive_moments(image, x, y, sigma0, config.moments_half_size)
    out["ixx"], out["iyy"], out["ixy"] = moments["ixx"], moments["iyy"], moments["ixy"]
    out["xErr"], out["yErr"] = centroid_errors(out, moments)
    out["flag_moments"] = moments["failed"]
    out["flag_blended"] = (objects["flag"] & sep.OBJ_MERGED) != 0
    out.update(pixel_flags(exposure, segmentation, x, y))
    truncated = (objects["flag"] & sep.OBJ_TRUNC) != 0
    out["flag_edge"] = out["flag_edge"] | truncated
    return out


def _as_table(columns: dict[str, np.ndarray], config: MeasurementConfig) -> Table:
    docs = dict(SOURCE_COLUMNS)
    docs.update(_aperture_columns(config.aperture_radii))
    order = [name for name in docs if not name.startswith("flag")]
    order += [name for name in docs if name.startswith("flag")]
    table = Table()
    for name in order:
        unit, description = docs[name]
        table[name] = columns[name]
        table[name].description = description
        if unit == "instFlux":
            table[name].description = f"{description} [instFlux: image units]"
        elif unit:
            table[name].unit = unit
    table.meta["threshold"] = config.threshold
    return table
