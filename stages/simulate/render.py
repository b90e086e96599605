"""Rendering a detector: sources with GalSim, the sky, and the detector's effects, to raw ADU.

The chain for one exposure of one detector, in electrons until the last step:

1. ``scene``: sources drawn with GalSim (``method='auto'``, so including the pixel response) at
   their true positions with the true PSF, plus the sky with its gradient; this is the image a
   perfectly flat detector would see (electrons at unit flat-field response);
2. times the flat field (:meth:`SimCam.flat`), plus dark current x dark time: the expectation;
3. Poisson noise; cosmic-ray deposits are added after it (so they can be switched off without
   changing any other pixel);
4. full well: charge above it bleeds up and down the column (conserved, lost off the edges);
5. nonlinearity (:meth:`SimCam.apply_nonlinearity`);
6. readout per amplifier: bias level, a per-exposure offset and row drift (shared with the
   overscan), the fixed bias structure, electrons / gain, Gaussian read noise; rounded and clipped
   to 16 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import galsim
import numpy as np
from astropy.table import Table

from repo.errors import DrpError
from repo.instruments.simcam import SimCam

from .plan import Visit
from .psf import GSPARAMS, psf_from_params, psf_params

#: Largest stamp half-size (pixels) of any source.
MAX_STAMP_HALF = 150


@dataclass
class DetectorSignal:
    """The charge in a detector's pixels at readout, and how it came about (truth)."""

    expected: np.ndarray
    electrons: np.ndarray
    cosmic_rays: np.ndarray
    saturated: np.ndarray


def sky_image(camera: SimCam, visit: Visit, detector: int) -> np.ndarray:
    """Sky electrons per pixel at unit flat response, with the visit's linear gradient."""
    det = camera.detector(detector)
    c = visit.conditions
    fx, fy = camera.pixel_to_focal_plane(
        detector, np.arange(det.nx)[None, :], np.arange(det.ny)[:, None]
    )
    r = camera.field_radius_mm
    return c.sky_level * (1.0 + c.sky_gx * fx / r + c.sky_gy * fy / r)


def _stamp_half_size(fwhm: float, extent: float) -> int:
    return int(min(MAX_STAMP_HALF, math.ceil(max(6.0 * fwhm, extent + 3.0 * fwhm, 12.0))))


def source_profile(
    source: Table.Row, psf: galsim.GSObject, fwhm: float, pixel_scale: float
) -> tuple[galsim.GSObject, int]:
    """The GalSim profile (pixel units, flux in electrons) of a source and its stamp half-size.

    ``source`` is a row of the table made by :func:`stages.simulate.truth.visit_sources`,
    ``psf`` the true PSF at its position and ``fwhm`` (pixels) roughly the PSF's FWHM.
    """
    flux = float(source["flux_electrons"])
    kind = source["source_type"]
    if kind == "galaxy":
        jac = np.array(source["jacobian"], dtype=float)
        profile = _galaxy(source).transform(*jac).withFlux(flux)
        q_disk = _axis_ratio(source["disk_e1"], source["disk_e2"])
        extent = 6.0 * source["disk_hlr"] / pixel_scale / math.sqrt(q_disk)
        return galsim.Convolve(profile, psf, gsparams=GSPARAMS), _stamp_half_size(fwhm, extent)
    if kind == "asteroid":
        length = max(float(source["trail_length"]), 1e-3)
        trail = galsim.Box(length, 1e-2, gsparams=GSPARAMS).rotate(
            float(source["trail_angle"]) * galsim.degrees
        )
        profile = galsim.Convolve(trail, psf, gsparams=GSPARAMS).withFlux(flux)
        return profile, _stamp_half_size(fwhm, 0.5 * length)
    # Point sources: 6 FWHM holds all but ~2e-4 of the flux; bright stars get 10 FWHM.
    half = _stamp_half_size(fwhm if flux < 1e6 else 10.0 * fwhm / 6.0, 0.0)
    return psf.withFlux(flux), half


def _axis_ratio(e1: float, e2: float) -> float:
    e = math.hypot(float(e1), float(e2))
    return math.sqrt((1.0 - e) / (1.0 + e))


def _galaxy(source: Table.Row) -> galsim.GSObject:
    """Bulge + disk profile in the sky frame (arcsec; +x west, +y north), unit flux."""
    bt = float(source["bulge_fraction"])
    disk = galsim.Exponential(half_light_radius=float(source["disk_hlr"]), gsparams=GSPARAMS)
    disk = disk.shear(e1=float(source["disk_e1"]), e2=float(source["disk_e2"]))
    if bt <= 0.0:
        return disk
    hlr = float(source["bulge_hlr"])
    bulge = galsim.DeVaucouleurs(half_light_radius=hlr, trunc=8.0 * hlr, gsparams=GSPARAMS)
    bulge = bulge.shear(e1=float(source["bulge_e1"]), e2=float(source["bulge_e2"]))
    return galsim.Add([bulge.withFlux(bt), disk.withFlux(1.0 - bt)], gsparams=GSPARAMS)


def render_sources(
    camera: SimCam, visit: Visit, detector: int, sources: Table, image: np.ndarray
) -> None:
    """Add every source to ``image`` (float64, ny x nx, electrons at unit flat response)."""
    if image.dtype != np.float64 or not image.flags.c_contiguous:
        raise DrpError("render_sources draws in place: image must be C-contiguous float64")
    canvas = galsim.ImageD(image, xmin=0, ymin=0, scale=1.0)
    if not len(sources):
        return
    params = psf_params(camera, visit, detector, sources["x"], sources["y"])
    fwhm = np.hypot(params["atm_fwhm"], params["opt_fwhm"])
    beta = visit.conditions.moffat_beta
    for k, source in enumerate(sources):
        if not source["flux_electrons"] > 0.0:
            continue
        psf = psf_from_params(beta, **{name: value[k] for name, value in params.items()})
        profile, half = source_profile(
            source, psf, float(fwhm[k]), camera.config.pixel_scale_arcsec
        )
        ix, iy = int(round(float(source["x"]))), int(round(float(source["y"])))
        bounds = galsim.BoundsI(ix - half, ix + half, iy - half, iy + half) & canvas.bounds
        if not bounds.isDefined():
            continue
        profile.drawImage(
            image=canvas[bounds],
            add_to_image=True,
            center=galsim.PositionD(float(source["x"]), float(source["y"])),
            method="auto",
        )


def bleed_columns(electrons: np.ndarray, full_well: float) -> np.ndarray:
    """Move charge above full well along columns (half up, half down); returns the array.

    Each run of over-full pixels in a column is set to full well and its excess fills the
    pixels beyond each end of the run up to full well, outward, until it is used up; charge that
    reaches the end of the column is lost. Operates in place.
    """
    columns = np.flatnonzero((electrons > full_well).any(axis=0))
    for col in columns:
        column = electrons[:, col]
        while True:
            over = np.flatnonzero(column > full_well)
            if over.size == 0:
                break
            start = over[0]
            stop = start + 1
            while stop < column.size and column[stop] > full_well:
                stop += 1
            excess = float(np.sum(column[start:stop] - full_well))
            column[start:stop] = full_well
            _fill(column[stop:], 0.5 * excess, full_well)
            _fill(column[:start][::-1], 0.5 * excess, full_well)
    return electrons


def _fill(segment: np.ndarray, charge: float, full_well: float) -> None:
    """Fill ``segment`` (a view) from its start up to full well with ``charge`` electrons."""
    if segment.size == 0 or charge <= 0.0:
        return
    room = np.clip(full_well - segment, 0.0, None)
    cumulative = np.cumsum(room)
    k = int(np.searchsorted(cumulative, charge))
    if k >= segment.size:
        segment += room
        return
    segment[:k] += room[:k]
    segment[k] += charge - (cumulative[k - 1] if k > 0 else 0.0)


def detector_signal(
    camera: SimCam,
    detector: int,
    scene: np.ndarray | None,
    band: str | None,
    dark_time: float,
    photon_rng: np.random.Generator,
    cosmic_rays: np.ndarray | None,
) -> DetectorSignal:
    """Charge in each pixel at readout (steps 2-4 of the module docstring).

    Parameters
    ----------
    scene : numpy.ndarray or None
        Electrons at unit flat response (None for a bias or dark).
    band : str or None
        Band of the flat field applied to ``scene``.
    dark_time : float
        Seconds of dark current.
    photon_rng : numpy.random.Generator
        The Poisson-noise stream.
    cosmic_rays : numpy.ndarray or None
        Cosmic-ray deposits (electrons) to add after the Poisson noise.
    """
    det = camera.detector(detector)
    expected = camera.dark_current(detector).astype(float) * dark_time
    if scene is not None:
        expected = expected + scene * camera.flat(detector, band)
    electrons = photon_rng.poisson(expected).astype(float)
    deposits = np.zeros((det.ny, det.nx), np.float32) if cosmic_rays is None else cosmic_rays
    electrons += deposits
    full_well = camera.config.full_well
    bleed_columns(electrons, full_well)
    saturated = electrons >= full_well
    return DetectorSignal(expected, electrons, deposits, saturated)


def read_out(
    camera: SimCam, detector: int, electrons: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Raw uint16 amplifier images (data, serial and parallel overscan) of a detector's charge."""
    det = camera.detector(detector)
    measured = camera.apply_nonlinearity(electrons)
    structure = camera.bias_structure(detector)
    images = []
    for amp in det.amplifiers:
        rows, cols = amp.raw_shape
        offset = rng.normal(0.0, 2.0)
        t = np.arange(rows) / rows
        drift = rng.uniform(0.5, 1.5) * np.sin(
            2 * np.pi * t * rng.uniform(1.0, 4.0) + rng.uniform(0, 6.3)
        )
        drift += rng.normal(0.0, 0.5) * (t - 0.5)
        raw = np.empty((rows, cols), dtype=float)
        raw[:] = amp.bias_level + offset + drift[:, None]
        data_rows, data_cols = amp.data_slice
        pattern = structure[amp.detector_slice]
        raw[data_rows, data_cols] += pattern + measured[amp.detector_slice] / amp.gain
        raw[amp.parallel_overscan_slice] += pattern[-1][None, :]
        raw += rng.normal(0.0, amp.read_noise / amp.gain, size=(rows, cols))
        images.append(np.clip(np.rint(raw), 0, 65535).astype(np.uint16))
    return images
