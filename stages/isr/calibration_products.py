"""Master calibrations: bias, dark and flat combined from raw calibration frames, with defects.

Each frame goes through the first steps of ISR (:func:`stages.isr.correction.assemble`: overscan, assembly,
gain), so every master is in **electrons**, and the frames are combined pixel by pixel with a
clipped mean whose clipping scale is the *expected* noise of a pixel (read noise and Poisson
noise of its median value), not the scatter of the few frames, which is too noisy to clip on
with three to five frames. Cosmic rays, which hit a pixel in one frame, are rejected this way.

* **bias** (electrons): the fixed bias structure left after overscan subtraction;
* **dark** (electrons per second): bias-subtracted, linearized frames divided by ``DARKTIME``;
  hot pixels and hot columns are the pixels above ``hot_threshold`` e-/s;
* **flat** (dimensionless): bias- and dark-subtracted, linearized frames, each divided by its
  own median (so lamp changes between frames do not matter), combined and divided by a
  normalization ``scale``. By default ``scale`` is this detector's median, so the flat is 1 on
  average over the detector. For a focal-plane normalization (the convention of the camera's
  true flat and the simulator's zero point: 1 at unit response on the optical axis, vignetting
  kept between detectors), combine the flats of a band with ``normalize=False`` and pass the
  list to :func:`normalize_flats`, which divides them all by the median over the focal plane.
  Dead pixels (response below ``dead_threshold`` of their row neighbours) are defects.

Every product carries the variance of its mean (from the noise model and the number of frames
kept), which :func:`stages.isr.correction.run_isr` adds to the variance plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits

from repo.errors import DrpError
from repo.formatters.fits import compressed_hdu

from .correction import DEFAULT_ISR_CONFIG, AssembledRaw, IsrConfig, assemble

#: Clipping threshold (expected sigmas from the median) of the frame combination.
CLIP_SIGMA = 5.0


@dataclass
class CalibrationProduct:
    """A master calibration: image, variance of the image, defects found and metadata.

    Parameters
    ----------
    image : numpy.ndarray
        float32 (ny, nx): electrons (bias), electrons per second (dark) or response (flat).
    variance : numpy.ndarray
        float32 variance of ``image`` (its noise as a mean of the frames).
    defects : numpy.ndarray
        bool mask of the defects found (hot pixels for a dark, dead pixels for a flat).
    metadata : dict
        ``KIND``, ``NFRAMES``, ``UNIT`` and kind-specific entries (``FLATSCAL`` ...).
    """

    image: np.ndarray
    variance: np.ndarray
    defects: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_hdulist(self) -> fits.HDUList:
        """FITS form: primary header with the metadata, IMAGE, VARIANCE and DEFECTS HDUs
        (tile-compressed without loss, :func:`repo.formatters.fits.compressed_hdu`)."""
        primary = fits.PrimaryHDU()
        for key, value in self.metadata.items():
            primary.header[key] = value
        return fits.HDUList(
            [
                primary,
                compressed_hdu(self.image.astype(np.float32), "IMAGE"),
                compressed_hdu(self.variance.astype(np.float32), "VARIANCE"),
                compressed_hdu(self.defects.astype(np.uint8), "DEFECTS"),
            ]
        )

    @classmethod
    def from_hdulist(cls, hdulist: fits.HDUList) -> CalibrationProduct:
        """Read back :meth:`to_hdulist` output."""
        try:
            meta = {
                k: v
                for k, v in hdulist[0].header.items()
                if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "")
            }
            return cls(
                image=np.asarray(hdulist["IMAGE"].data, dtype=np.float32),
                variance=np.asarray(hdulist["VARIANCE"].data, dtype=np.float32),
                defects=np.asarray(hdulist["DEFECTS"].data).astype(bool),
                metadata=meta,
            )
        except KeyError as exc:
            raise DrpError(f"master calibration file lacks {exc.args[0]}") from None


def clipped_mean(
    stack: np.ndarray, noise_variance: np.ndarray, nsigma: float = CLIP_SIGMA
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-wise mean of a stack of frames rejecting values far from the pixel's median.

    Parameters
    ----------
    stack : numpy.ndarray
        (n_frames, ny, nx) values.
    noise_variance : numpy.ndarray
        Expected variance of one frame's value, broadcastable to (n_frames, ny, nx).
    nsigma : float
        A value more than ``nsigma`` expected sigmas from the pixel's median is rejected.

    Returns
    -------
    mean, variance : numpy.ndarray
        The clipped mean and its variance ``noise_variance / n_kept`` (median of the stack
        where every value was rejected).
    """
    median = np.median(stack, axis=0)
    sigma = np.sqrt(np.broadcast_to(noise_variance, stack.shape))
    keep = np.abs(stack - median) <= nsigma * sigma
    n_kept = keep.sum(axis=0)
    total = np.where(keep, stack, 0.0).sum(axis=0)
    mean = np.where(n_kept > 0, total / np.maximum(n_kept, 1), median)
    one = np.broadcast_to(noise_variance, stack.shape)[0]
    return mean, one / np.maximum(n_kept, 1)


def _assembled(raws: Sequence[fits.HDUList], kind: str, config: IsrConfig) -> list[AssembledRaw]:
    if not raws:
        raise DrpError(f"no raw {kind} frames to combine")
    frames = []
    for raw in raws:
        obstype = raw[0].header.get("OBSTYPE")
        if obstype is not None and obstype != kind:
            raise DrpError(
                f"raw {raw[0].header.get('EXPNUM')} is a {obstype!r}, not a {kind} frame"
            )
        frames.append(assemble(raw, config))
    shapes = {f.electrons.shape for f in frames}
    if len(shapes) > 1:
        raise DrpError(f"{kind} frames have different shapes: {sorted(shapes)}")
    detectors = {f.header.get("CCDNUM") for f in frames}
    if len(detectors) > 1:
        raise DrpError(f"{kind} frames come from several detectors: {sorted(detectors)}")
    return frames


def _image(calibration: Any) -> np.ndarray:
    return np.asarray(getattr(calibration, "image", calibration), dtype=np.float64)


def combine_bias(
    raws: Sequence[fits.HDUList], camera: Any = None, config: IsrConfig = DEFAULT_ISR_CONFIG
) -> CalibrationProduct:
    """Master bias (electrons) from raw bias frames: overscan-subtracted, clipped mean.

    Parameters
    ----------
    raws : sequence of astropy.io.fits.HDUList
        Raw bias frames of one detector.
    camera : SimCam, optional
        Unused (biases need no camera model); accepted for a uniform signature.
    config : IsrConfig
        Overscan options (must match those of the ISR that uses the bias).
    """
    frames = _assembled(raws, "bias", config)
    stack = np.stack([f.electrons for f in frames])
    noise = frames[0].read_noise.astype(np.float64) ** 2
    mean, variance = clipped_mean(stack, noise)
    return CalibrationProduct(
        image=mean.astype(np.float32),
        variance=variance.astype(np.float32),
        defects=np.zeros(mean.shape, dtype=bool),
        metadata={"KIND": "bias", "NFRAMES": len(frames), "UNIT": "electron"},
    )


def _corrected_stack(
    frames: list[AssembledRaw], bias: np.ndarray, camera: Any, config: IsrConfig
) -> np.ndarray:
    """Bias-subtracted, linearized charge of each frame (electrons)."""
    stack = np.stack([f.electrons - bias for f in frames])
    if config.linearize:
        stack = camera.linearize(stack)
    return stack


def combine_dark(
    raws: Sequence[fits.HDUList],
    bias: np.ndarray | CalibrationProduct,
    camera: Any,
    config: IsrConfig = DEFAULT_ISR_CONFIG,
    hot_threshold: float = 0.5,
) -> CalibrationProduct:
    """Master dark (electrons per second) from raw dark frames, and the hot pixels.

    Parameters
    ----------
    raws : sequence of astropy.io.fits.HDUList
        Raw dark frames of one detector (``DARKTIME`` > 0).
    bias : numpy.ndarray or CalibrationProduct
        Master bias (electrons).
    camera : SimCam
        For the linearity correction.
    config : IsrConfig
        Overscan and linearity options.
    hot_threshold : float
        Dark current (e-/s) above which a pixel is a defect (hot pixel or hot column).
    """
    frames = _assembled(raws, "dark", config)
    times = np.array([float(f.header.get("DARKTIME", f.header.get("EXPTIME", 0))) for f in frames])
    if np.any(times <= 0):
        raise DrpError("dark frames need DARKTIME (or EXPTIME) > 0")
    charge = _corrected_stack(frames, _image(bias), camera, config)
    rate = charge / times[:, None, None]
    read_var = frames[0].read_noise.astype(np.float64) ** 2
    median_charge = np.clip(np.median(charge, axis=0), 0.0, None)
    noise = (read_var + median_charge)[None] / times[:, None, None] ** 2
    mean, variance = clipped_mean(rate, noise)
    return CalibrationProduct(
        image=mean.astype(np.float32),
        variance=variance.astype(np.float32),
        defects=mean > hot_threshold,
        metadata={
            "KIND": "dark",
            "NFRAMES": len(frames),
            "UNIT": "electron/s",
            "HOTTHRES": hot_threshold,
            "NHOT": int((mean > hot_threshold).sum()),
        },
    )


def combine_flat(
    raws: Sequence[fits.HDUList],
    bias: np.ndarray | CalibrationProduct,
    dark: np.ndarray | CalibrationProduct,
    camera: Any,
    config: IsrConfig = DEFAULT_ISR_CONFIG,
    normalize: bool = True,
    dead_threshold: float = 0.5,
) -> CalibrationProduct:
    """Master flat from raw flat frames of one detector and band, and its dead pixels.

    Each frame is bias- and dark-subtracted, linearized and divided by its own median; the
    frames are combined with a clipped mean and the result divided by ``FLATSCAL``.

    Parameters
    ----------
    raws : sequence of astropy.io.fits.HDUList
        Raw flat frames (one detector, one band).
    bias, dark : numpy.ndarray or CalibrationProduct
        Master bias (electrons) and dark (electrons per second).
    camera : SimCam
        For the linearity correction.
    config : IsrConfig
        Overscan and linearity options.
    normalize : bool
        Divide by this detector's median (``FLATSCAL`` = that median). With False the flat is
        left in units of the frames' medians (``FLATSCAL`` = 1) and ``FLATLVL`` holds the
        mean level in electrons: pass such flats to :func:`normalize_flats`.
    dead_threshold : float
        A pixel whose response is below this fraction of the median of its four row
        neighbours (two on each side) is a dead pixel (defect).
    """
    frames = _assembled(raws, "flat", config)
    bands = {f.header.get("BAND", f.header.get("FILTER")) for f in frames}
    if len(bands) > 1:
        raise DrpError(f"flat frames of several bands combined: {sorted(map(str, bands))}")
    times = np.array([float(f.header.get("DARKTIME", f.header.get("EXPTIME", 0))) for f in frames])
    charge = _corrected_stack(frames, _image(bias), camera, config)
    charge -= _image(dark)[None] * times[:, None, None]
    levels = np.median(charge.reshape(len(frames), -1), axis=1)
    if np.any(levels <= 0):
        raise DrpError("a flat frame has a non-positive median level")
    relative = charge / levels[:, None, None]
    read_var = frames[0].read_noise.astype(np.float64) ** 2
    noise = (read_var[None] + np.clip(charge, 0.0, None)) / levels[:, None, None] ** 2
    mean, variance = clipped_mean(relative, np.median(noise, axis=0))
    scale = float(np.median(mean)) if normalize else 1.0
    mean /= scale
    variance /= scale**2
    dead = _dead_pixels(mean, dead_threshold)
    return CalibrationProduct(
        image=mean.astype(np.float32),
        variance=variance.astype(np.float32),
        defects=dead,
        metadata={
            "KIND": "flat",
            "NFRAMES": len(frames),
            "UNIT": "",
            "BAND": str(next(iter(bands))),
            "FLATSCAL": scale,
            "FLATLVL": float(np.mean(levels)),
            "NDEAD": int(dead.sum()),
        },
    )


def _dead_pixels(flat: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels responding below ``threshold`` x the median of their 4 row neighbours."""
    padded = np.pad(flat, ((0, 0), (2, 2)), mode="edge")
    n = flat.shape[1]
    neighbours = np.stack([padded[:, k : k + n] for k in (0, 1, 3, 4)])
    return flat < threshold * np.median(neighbours, axis=0)


def normalize_flats(flats: Sequence[CalibrationProduct]) -> list[CalibrationProduct]:
    """Flats of the detectors of one band normalized together: the focal-plane median is 1.

    The inputs come from :func:`combine_flat` with ``normalize=False``; each is brought to a
    common scale through its ``FLATLVL`` (the flat screen illuminates every detector equally),
    so the vignetting between detectors is kept; the result is divided by the median over all
    detectors' pixels (``FLATSCAL`` in each output).
    """
    if not flats:
        raise DrpError("no flats to normalize")
    if any(f.metadata.get("FLATSCAL", 1.0) != 1.0 for f in flats):
        raise DrpError("normalize_flats needs flats combined with normalize=False")
    levels = np.array([float(f.metadata["FLATLVL"]) for f in flats])
    rescaled = [f.image.astype(np.float64) * lvl for f, lvl in zip(flats, levels, strict=True)]
    scale = float(np.median(np.concatenate([r.ravel() for r in rescaled])))
    out = []
    for flat, image, lvl in zip(flats, rescaled, levels, strict=True):
        ratio = lvl / scale
        out.append(
            CalibrationProduct(
                image=(image / scale).astype(np.float32),
                variance=(flat.variance * ratio**2).astype(np.float32),
                defects=flat.defects.copy(),
                metadata={**flat.metadata, "FLATSCAL": scale / lvl, "FPNORM": True},
            )
        )
    return out


def combine_defects(*masks: np.ndarray | CalibrationProduct) -> np.ndarray:
    """The union of defect masks (arrays, or the ``defects`` of calibration products)."""
    if not masks:
        raise DrpError("no defect masks to combine")
    arrays = [np.asarray(getattr(m, "defects", m), dtype=bool) for m in masks]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DrpError(f"defect masks have different shapes: {sorted(shapes)}")
    return np.logical_or.reduce(arrays)
