"""Warping calexps onto a patch: one visit's detectors resampled onto the patch's pixel grid.

A warp is an :class:`~repo.exposure.Exposure` of the patch's outer box and WCS in nJy per pixel
(each calexp's photometric calibration applied, so the co-add's zero point is 31.4, 1 nJy), with
``NO_DATA`` where no detector of the visit lands, and a :class:`.coadd_psf.CoaddPsf` of the
visit's detectors. Only the part of the patch that a detector's footprint covers is resampled
(:mod:`.resample`). Metadata keep what the co-add needs: ``NOISECOR``, the factor from the sum of
the pixel variances to the variance of a large aperture's sum (1 / mean ``sum(w^2)`` of the
kernel, see :mod:`.resample`), and the visit, band and number of detectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from repo.errors import DrpError
from repo.exposure import Exposure, PhotoCalib

from .coadd_psf import CoaddPsf, PsfInput, fit_affine
from .resample import DEFAULT_GRID_STEP, mapping_grid, resample

#: Mask planes whose input pixels are never interpolated from (their values mean nothing).
SKIP_PLANES = ("NO_DATA", "BAD", "SAT")


@dataclass(frozen=True)
class DetectorWarp:
    """One detector resampled into a box of the output grid."""

    box: tuple[int, int, int, int]  # x0, y0, nx, ny in output pixels
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    sum_w2: np.ndarray
    psf_input: PsfInput | None


def footprint_in(output_wcs: WCS, exposure: Exposure) -> np.ndarray:
    """The exposure's pixel-grid edges (its outer pixel corners) in output pixels, 4 x 2."""
    ny, nx = exposure.shape
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    sky = exposure.wcs.pixel_to_world_values(x, y)
    ox, oy = output_wcs.world_to_pixel_values(*sky)
    return np.column_stack([ox, oy])


def warp_detector(
    exposure: Exposure,
    output_wcs: WCS,
    output_shape: tuple[int, int],
    *,
    visit: int,
    detector: int,
    step: int = DEFAULT_GRID_STEP,
) -> DetectorWarp | None:
    """Resample one calexp (in nJy) onto the part of an output grid it covers; None if none.

    Raises
    ------
    DrpError
        If the exposure has no WCS or no photometric calibration.
    """
    label = f"visit={visit} detector={detector}"
    if exposure.wcs is None or exposure.photo_calib is None:
        raise DrpError(f"calexp {label}: a warp needs its WCS and photometric calibration")
    corners = footprint_in(output_wcs, exposure)
    ny, nx = output_shape
    x0 = max(int(np.floor(corners[:, 0].min())), 0)
    y0 = max(int(np.floor(corners[:, 1].min())), 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 1, nx)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 1, ny)
    if x1 <= x0 or y1 <= y0:
        return None
    box_wcs = output_wcs.deepcopy()
    box_wcs.wcs.crpix = box_wcs.wcs.crpix - [x0, y0]
    shape = (y1 - y0, x1 - x0)
    grid_x, grid_y = mapping_grid(box_wcs, exposure.wcs, shape, step)
    image, variance, mask, sum_w2 = resample(
        exposure.image,
        exposure.variance,
        exposure.mask,
        grid_x,
        grid_y,
        shape,
        step=step,
        scale=exposure.photo_calib.calibration_mean,
        skip_bits=exposure.bits(*[p for p in SKIP_PLANES if p in exposure.mask_planes]),
        no_data_bit=exposure.bit("NO_DATA"),
    )
    if not np.any(sum_w2 > 0):
        return None
    psf_input = None
    if exposure.psf is not None:
        nodes_x = np.minimum(np.arange(grid_x.shape[1]) * step, shape[1] - 1) + x0
        nodes_y = np.minimum(np.arange(grid_x.shape[0]) * step, shape[0] - 1) + y0
        out_x, out_y = np.meshgrid(nodes_x, nodes_y)
        inside = (grid_x > -0.5) & (grid_x < exposure.shape[1] - 0.5)
        inside &= (grid_y > -0.5) & (grid_y < exposure.shape[0] - 0.5)
        if inside.sum() < 3:
            inside[:] = True
        affine = fit_affine(out_x[inside], out_y[inside], grid_x[inside], grid_y[inside])
        psf_input = PsfInput(exposure.psf, affine, corners, 1.0, visit, detector)
    return DetectorWarp((x0, y0, x1 - x0, y1 - y0), image, variance, mask, sum_w2, psf_input)


def make_warp(
    calexps: Mapping[int, Exposure] | Sequence[tuple[int, Exposure]],
    output_wcs: WCS,
    output_shape: tuple[int, int],
    *,
    visit: int,
    band: str = "",
    step: int = DEFAULT_GRID_STEP,
) -> Exposure | None:
    """One visit's warp of a patch from its calexps by detector; None if none lands on it.

    Detectors do not overlap on the sky; where two warped boxes meet, a pixel already filled
    keeps its value.
    """
    items = list(calexps.items()) if isinstance(calexps, Mapping) else list(calexps)
    if not items:
        raise DrpError(f"visit={visit}: no calexp to warp")
    first = items[0][1]
    planes = first.mask_planes
    for detector, exposure in items:
        if exposure.mask_planes != planes:
            raise DrpError(
                f"visit={visit}: calexp detector={detector} has other mask planes than "
                f"detector={items[0][0]}; a warp needs one mask layout"
            )
    no_data = first.bit("NO_DATA")
    image = np.full(output_shape, np.nan, np.float32)
    variance = np.full(output_shape, np.nan, np.float32)
    mask = np.full(output_shape, no_data, np.int32)
    sum_w2 = np.zeros(output_shape, np.float32)
    psf_inputs = []
    for detector, exposure in items:
        piece = warp_detector(
            exposure, output_wcs, output_shape, visit=visit, detector=int(detector), step=step
        )
        if piece is None:
            continue
        x0, y0, nx, ny = piece.box
        window = (slice(y0, y0 + ny), slice(x0, x0 + nx))
        fill = (piece.sum_w2 > 0) & ~(sum_w2[window] > 0)
        image[window][fill] = piece.image[fill]
        variance[window][fill] = piece.variance[fill]
        mask[window][fill] = piece.mask[fill]
        sum_w2[window][fill] = piece.sum_w2[fill]
        if piece.psf_input is not None:
            psf_inputs.append(piece.psf_input)
    covered = sum_w2 > 0
    if not covered.any():
        return None
    metadata = {
        "VISIT": int(visit),
        "NINPUTS": len(psf_inputs),
        "NOISECOR": float(1.0 / np.mean(sum_w2[covered])),
        "BUNIT": "nJy",
    }
    if band:
        metadata["BAND"] = band
    return Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=output_wcs,
        psf=CoaddPsf(psf_inputs) if psf_inputs else None,
        photo_calib=PhotoCalib(1.0),
        mask_planes=dict(planes),
        mask_plane_docs=dict(first.mask_plane_docs),
        metadata=metadata,
    )
