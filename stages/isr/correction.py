"""Instrument signature removal (ISR): from a raw multi-amplifier file to an Exposure in electrons.

The chain for one raw (one detector of one exposure), in the order the camera's effects must be
undone (the reverse of :mod:`stages.simulate.render`):

1. per amplifier, the **serial overscan**: the mean of each row's overscan columns, smoothed along
   the rows (a Savitzky-Golay filter), is subtracted from that row; then the **parallel overscan**
   if the amplifier has one: the mean of each column's overscan rows, smoothed along the columns,
   is subtracted from that column (smoothing keeps the overscan's own read noise out of the image;
   the fixed column pattern is left for the master bias);
2. **assembly** of the amplifiers' data sections into the detector image (``DETSEC``) and
   **gain** to electrons (``GAIN`` of each amplifier);
3. the **master bias** (electrons) is subtracted;
4. **linearity** correction with the camera's model (``camera.linearize``), on the charge with
   the bias removed;
5. the **master dark** (electrons per second) times ``DARKTIME`` is subtracted;
6. division by the **master flat**;
7. masks: ``SAT`` where a raw pixel reached the amplifier's ``SATURATE`` level (bleed trails are
   at full well, so they are included), ``BAD`` from the defect list (interpolated over by
   default, which sets ``INTRP``), ``EDGE`` for the outer ``edge_width`` pixels if asked;
8. the **variance** plane in electrons^2: ``(max(charge, 0) + read_noise^2) / flat^2``, where
   ``charge`` is the pixel's charge before the flat (source, sky and dark current), plus the
   variance of the master calibrations if they carry one.

The image stays in electrons (the photometric calibration to nJy comes later). The pixel raw
layout and the header keys (``DATASEC``, ``BIASSEC``, ``PBIASSEC``, ``DETSEC``, ``GAIN``,
``RDNOISE``, ``SATURATE``, ``EXPTIME``, ``DARKTIME``) are those of :mod:`stages.simulate.raw`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from scipy.signal import savgol_filter

from repo.errors import DrpError
from repo.exposure import Exposure

_SECTION = re.compile(r"^\[(\d+):(\d+),(\d+):(\d+)\]$")
#: Header keys every amplifier extension must carry.
_AMPLIFIER_KEYS = ("DATASEC", "BIASSEC", "DETSEC", "GAIN", "RDNOISE", "SATURATE")


class CalibrationImage(Protocol):
    """A master calibration with its per-pixel variance (:class:`CalibrationProduct`)."""

    image: np.ndarray
    variance: np.ndarray | None


@dataclass(frozen=True)
class IsrConfig:
    """Options of :func:`run_isr`.

    Parameters
    ----------
    overscan_smoothing : int
        Window (rows, or columns for the parallel overscan) of the Savitzky-Golay filter that
        smooths the overscan profiles (odd; 1 disables the smoothing).
    parallel_overscan : bool
        Subtract the parallel overscan when the amplifier has one.
    linearize : bool
        Apply the camera's linearity correction.
    interpolate_bad : bool
        Replace pixels of the defect list by an interpolation of their neighbours (sets INTRP).
    edge_width : int
        Width in pixels of the EDGE mask along the detector border (0: none).
    """

    overscan_smoothing: int = 31
    parallel_overscan: bool = True
    linearize: bool = True
    interpolate_bad: bool = True
    edge_width: int = 0

    def __post_init__(self) -> None:
        if self.overscan_smoothing < 1 or self.overscan_smoothing % 2 == 0:
            raise DrpError(
                f"IsrConfig.overscan_smoothing must be odd and >= 1, got {self.overscan_smoothing}"
            )
        if self.edge_width < 0:
            raise DrpError(f"IsrConfig.edge_width must be >= 0, got {self.edge_width}")


#: The default ISR options.
DEFAULT_ISR_CONFIG = IsrConfig()


@dataclass(frozen=True)
class AmplifierReadout:
    """Layout and electronics of one amplifier extension, read from its header.

    Slices are numpy ``(rows, columns)`` of the raw amplifier image (``data``, ``serial``,
    ``parallel``) or of the assembled detector image (``detector``).
    """

    name: str
    data: tuple[slice, slice]
    serial: tuple[slice, slice]
    parallel: tuple[slice, slice] | None
    detector: tuple[slice, slice]
    gain: float
    read_noise: float
    saturation: float


@dataclass
class AssembledRaw:
    """A raw after overscan subtraction and assembly, in electrons (gain applied).

    ``electrons`` is float64 (ny, nx); ``gain`` and ``read_noise`` are per-pixel maps of the
    amplifier values; ``saturated`` marks pixels at or above their amplifier's ``SATURATE``.
    """

    electrons: np.ndarray
    gain: np.ndarray
    read_noise: np.ndarray
    saturated: np.ndarray
    amplifiers: list[AmplifierReadout]
    header: fits.Header


def parse_section(text: str) -> tuple[slice, slice]:
    """numpy ``(rows, columns)`` slices of a FITS section ``'[x1:x2,y1:y2]'`` (1-based)."""
    match = _SECTION.match(str(text).replace(" ", ""))
    if not match:
        raise DrpError(f"malformed FITS section {text!r} (expected '[x1:x2,y1:y2]')")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if x2 < x1 or y2 < y1 or x1 < 1 or y1 < 1:
        raise DrpError(f"FITS section {text!r} must be ascending and 1-based")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def amplifier_readout(header: fits.Header) -> AmplifierReadout:
    """The :class:`AmplifierReadout` of an amplifier extension header."""
    name = header.get("EXTNAME", header.get("AMPNAME", "?"))
    missing = [k for k in _AMPLIFIER_KEYS if k not in header]
    if missing:
        raise DrpError(f"amplifier {name} header lacks {', '.join(missing)}")
    return AmplifierReadout(
        name=str(name),
        data=parse_section(header["DATASEC"]),
        serial=parse_section(header["BIASSEC"]),
        parallel=parse_section(header["PBIASSEC"]) if "PBIASSEC" in header else None,
        detector=parse_section(header["DETSEC"]),
        gain=float(header["GAIN"]),
        read_noise=float(header["RDNOISE"]),
        saturation=float(header["SATURATE"]),
    )


def _smooth(profile: np.ndarray, window: int) -> np.ndarray:
    """Savitzky-Golay smoothing (quadratic) of a 1-D profile; short profiles are averaged."""
    if window <= 1:
        return profile
    if profile.size <= window:
        return np.full_like(profile, profile.mean())
    return savgol_filter(profile, window, 2, mode="interp")


def subtract_overscan(
    image: np.ndarray, amp: AmplifierReadout, config: IsrConfig = DEFAULT_ISR_CONFIG
) -> np.ndarray:
    """The data section of one raw amplifier image (ADU, float64) with its overscans removed.

    Serial overscan: per-row mean of the overscan columns, smoothed along the rows, subtracted
    from the data rows. Parallel overscan (when present and enabled): per-column mean of the
    overscan rows (already serial-corrected), smoothed along the columns, subtracted from each
    column.
    """
    raw = np.asarray(image, dtype=np.float64)
    rows, cols = amp.data
    serial = raw[amp.serial]
    if serial.shape[0] != rows.stop - rows.start:
        raise DrpError(f"amplifier {amp.name}: BIASSEC rows do not match DATASEC rows")
    data = raw[amp.data] - _smooth(serial.mean(axis=1), config.overscan_smoothing)[:, None]
    if amp.parallel is not None and config.parallel_overscan:
        prow, pcol = amp.parallel
        # The parallel overscan rows also get the serial correction of their own rows.
        serial_rows = raw[prow, amp.serial[1]].mean(axis=1, keepdims=True)
        parallel = raw[prow, pcol] - serial_rows
        data -= _smooth(parallel.mean(axis=0), config.overscan_smoothing)[None, :]
    return data


def assemble(raw: fits.HDUList, config: IsrConfig = DEFAULT_ISR_CONFIG) -> AssembledRaw:
    """Overscan-subtract every amplifier of a raw, assemble the detector and apply the gains.

    Parameters
    ----------
    raw : astropy.io.fits.HDUList
        Primary HDU with the exposure header, one image HDU per amplifier.
    config : IsrConfig
        Overscan options.

    Returns
    -------
    AssembledRaw
        Electrons (no bias, dark or flat correction yet) and per-pixel electronics maps.
    """
    if len(raw) < 2:
        raise DrpError("raw has no amplifier extensions")
    header = raw[0].header
    amps = [amplifier_readout(hdu.header) for hdu in raw[1:]]
    ny = max(a.detector[0].stop for a in amps)
    nx = max(a.detector[1].stop for a in amps)
    electrons = np.full((ny, nx), np.nan)
    gain = np.zeros((ny, nx), dtype=np.float32)
    read_noise = np.zeros((ny, nx), dtype=np.float32)
    saturated = np.zeros((ny, nx), dtype=bool)
    for hdu, amp in zip(raw[1:], amps, strict=True):
        pixels = hdu.data
        if pixels is None:
            raise DrpError(f"amplifier {amp.name} of the raw has no pixels")
        data = subtract_overscan(pixels, amp, config)
        if data.shape != electrons[amp.detector].shape:
            raise DrpError(f"amplifier {amp.name}: DATASEC and DETSEC sizes differ")
        electrons[amp.detector] = data * amp.gain
        gain[amp.detector] = amp.gain
        read_noise[amp.detector] = amp.read_noise
        saturated[amp.detector] = pixels[amp.data] >= amp.saturation
    if np.isnan(electrons).any():
        raise DrpError("raw amplifiers do not cover the detector (DETSEC)")
    return AssembledRaw(electrons, gain, read_noise, saturated, amps, header)


def _planes(calibration: Any, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, Any]:
    """(image, variance or None) of a master calibration given as an array or a product."""
    image = getattr(calibration, "image", calibration)
    variance = getattr(calibration, "variance", None)
    image = np.asarray(image, dtype=np.float64)
    if image.shape != shape:
        raise DrpError(f"master {name} has shape {image.shape}, the raw {shape}")
    return image, variance


def raw_wcs(raw: fits.HDUList) -> WCS | None:
    """The approximate WCS of the assembled detector from the raw's headers, or None.

    The primary header's WCS if it has one; else the first amplifier's, whose reference pixel
    is moved from the amplifier's raw pixels to the detector's (by ``DETSEC`` - ``DATASEC``).
    """
    if "CTYPE1" in raw[0].header:
        return _celestial_wcs(fits.Header(raw[0].header))
    if len(raw) < 2 or "CTYPE1" not in raw[1].header:
        return None
    header = fits.Header(raw[1].header)
    amp = amplifier_readout(header)
    header["CRPIX1"] = float(header["CRPIX1"]) + amp.detector[1].start - amp.data[1].start
    header["CRPIX2"] = float(header["CRPIX2"]) + amp.detector[0].start - amp.data[0].start
    return _celestial_wcs(header)


def _celestial_wcs(header: fits.Header) -> WCS:
    for key in ("NAXIS1", "NAXIS2"):
        header.remove(key, ignore_missing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2, relax=True)


def fill_values(
    image: np.ndarray,
    bad: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    sigma: float = 1.0,
    max_iter: int = 5,
) -> np.ndarray:
    """Interpolated values at pixels ``(ys, xs)`` from the good (not ``bad``) pixels nearby.

    Each pixel gets the mean of the good pixels within ``2 sigma`` (at least 2 pixels),
    weighted by a Gaussian of ``sigma`` pixels; where none is that close, the radius and sigma
    are doubled (``max_iter`` times; a pixel with no good pixel at all keeps its value). Only
    the requested pixels are visited, so the cost grows with their number, not the image size.
    """
    ny, nx = image.shape
    ys = np.asarray(ys, dtype=np.intp)
    xs = np.asarray(xs, dtype=np.intp)
    result = np.asarray(image[ys, xs], dtype=np.float64).copy()
    todo = np.arange(ys.size)
    s = float(sigma)
    for _ in range(max_iter + 1):
        if todo.size == 0:
            break
        py, px = ys[todo], xs[todo]
        half = max(2, int(math.ceil(2.0 * s)))
        num = np.zeros(todo.size)
        den = np.zeros(todo.size)
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                if dx == 0 and dy == 0:
                    continue
                weight = math.exp(-0.5 * (dx * dx + dy * dy) / (s * s))
                yy, xx = py + dy, px + dx
                inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
                yy, xx = np.where(inside, yy, 0), np.where(inside, xx, 0)
                good = inside & ~bad[yy, xx]
                num += np.where(good, weight * image[yy, xx], 0.0)
                den += np.where(good, weight, 0.0)
        done = den > 0
        result[todo[done]] = num[done] / den[done]
        todo = todo[~done]
        s *= 2.0
    return result


def run_isr(
    raw: fits.HDUList,
    camera: Any,
    bias: np.ndarray | CalibrationImage,
    dark: np.ndarray | CalibrationImage,
    flat: np.ndarray | CalibrationImage,
    defects: np.ndarray | None = None,
    config: IsrConfig = DEFAULT_ISR_CONFIG,
) -> Exposure:
    """Remove the instrument signature from a raw: an Exposure in electrons.

    Parameters
    ----------
    raw : astropy.io.fits.HDUList
        The raw file (see :mod:`stages.simulate.raw` for the layout and header keys).
    camera : repo.instruments.simcam.SimCam
        The camera: its ``linearize`` undoes the nonlinearity.
    bias : numpy.ndarray or CalibrationProduct
        Master bias, electrons (:func:`stages.isr.calibration_products.combine_bias`).
    dark : numpy.ndarray or CalibrationProduct
        Master dark, electrons per second.
    flat : numpy.ndarray or CalibrationProduct
        Master flat (normalized; see :func:`stages.isr.calibration_products.combine_flat`).
    defects : numpy.ndarray, optional
        Boolean defect mask (bad columns, hot pixels): the BAD plane.
    config : IsrConfig
        Options.

    Returns
    -------
    repo.exposure.Exposure
        float32 image and variance in electrons, the mask (SAT, BAD, INTRP, EDGE), the raw's
        approximate WCS and metadata: ``EXPTIME``, ``DARKTIME``, ``GAIN<i>``/``RDNOISE<i>``
        per amplifier, ``LINCORR``, ``OVERSCAN``, ``BIASCORR``, ``DARKCORR``, ``FLATCORR``,
        plus the raw's ``VISIT``, ``DETECTOR``, ``BAND``, ``FILTER``, ``MJD-OBS``, ``DATE-OBS``.
    """
    assembled = assemble(raw, config)
    header = assembled.header
    shape = assembled.electrons.shape
    bias_image, bias_var = _planes(bias, "bias", shape)
    dark_image, dark_var = _planes(dark, "dark", shape)
    flat_image, flat_var = _planes(flat, "flat", shape)
    if not np.all(np.isfinite(flat_image)) or np.any(flat_image <= 0):
        raise DrpError("master flat has non-positive or non-finite pixels")
    exptime = float(header.get("EXPTIME", 0.0))
    darktime = float(header.get("DARKTIME", exptime))

    charge = assembled.electrons - bias_image
    if config.linearize:
        charge = camera.linearize(charge)
    charge -= dark_image * darktime
    image = charge / flat_image
    # Variance of the charge: Poisson on source + sky + dark current, and read noise.
    dark_charge = np.clip(dark_image, 0.0, None) * darktime
    variance = np.clip(charge + dark_charge, 0.0, None) + assembled.read_noise.astype(float) ** 2
    if bias_var is not None:
        variance = variance + bias_var
    if dark_var is not None:
        variance = variance + np.asarray(dark_var) * darktime**2
    variance = variance / flat_image**2
    if flat_var is not None:
        variance = variance + image**2 * np.asarray(flat_var) / flat_image**2

    exposure = Exposure(
        image=image.astype(np.float32),
        mask=np.zeros(shape, dtype=np.int32),
        variance=variance.astype(np.float32),
        wcs=raw_wcs(raw),
    )
    exposure.mask[assembled.saturated] |= exposure.bit("SAT")
    if defects is not None:
        defects = np.asarray(defects, dtype=bool)
        if defects.shape != shape:
            raise DrpError(f"defect mask has shape {defects.shape}, the raw {shape}")
        exposure.mask[defects] |= exposure.bit("BAD")
        if config.interpolate_bad:
            fix = defects & ~assembled.saturated
            ys, xs = np.nonzero(fix)
            exposure.image[ys, xs] = fill_values(exposure.image, fix, ys, xs)
            exposure.variance[ys, xs] = fill_values(exposure.variance, fix, ys, xs)
            exposure.mask[fix] |= exposure.bit("INTRP")
    if config.edge_width:
        edge = np.ones(shape, dtype=bool)
        w = config.edge_width
        edge[w:-w, w:-w] = False
        exposure.mask[edge] |= exposure.bit("EDGE")
    exposure.metadata.update(_isr_metadata(header, assembled, config, exptime, darktime))
    return exposure


def _isr_metadata(
    header: fits.Header,
    assembled: AssembledRaw,
    config: IsrConfig,
    exptime: float,
    darktime: float,
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, name in (
        ("EXPNUM", "VISIT"),
        ("CCDNUM", "DETECTOR"),
        ("BAND", "BAND"),
        ("FILTER", "FILTER"),
        ("MJD-OBS", "MJD-OBS"),
        ("DATE-OBS", "DATE-OBS"),
        ("AIRMASS", "AIRMASS"),
    ):
        if key in header:
            value = header[key]
            meta[name] = value.item() if isinstance(value, np.generic) else value
    meta["EXPTIME"] = exptime
    meta["DARKTIME"] = darktime
    meta["NAMPS"] = len(assembled.amplifiers)
    for k, amp in enumerate(assembled.amplifiers):
        meta[f"GAIN{k}"] = amp.gain
        meta[f"RDNOISE{k}"] = amp.read_noise
        meta[f"SATURAT{k}"] = amp.saturation
    meta["OVERSCAN"] = "serial+parallel" if config.parallel_overscan else "serial"
    meta["LINCORR"] = bool(config.linearize)
    meta["BIASCORR"] = True
    meta["DARKCORR"] = True
    meta["FLATCORR"] = True
    meta["BUNIT"] = "electron"
    return meta
