"""Co-adding the warps of a patch and band: weighted mean, artifact rejection, masks, PSF.

The co-add is the mean of the warps weighted by one number per warp, the inverse of its median
pixel variance: a weight per warp (not per pixel) keeps the co-add PSF the weighted sum of the
inputs' PSFs, which a per-pixel weight would break around every star.

Artifact rejection, in the spirit of Rubin's CompareWarp
-------------------------------------------------------
An artifact (an asteroid's trail, a satellite streak, a transient, a cosmic ray the single-frame
pass missed) is in one warp and not in the others. Each warp is compared with a robust stack of all
of them, the per-pixel median (``template``): pixels above it by ``detect_sigma`` of the two noises
together, grown to the connected pixels above ``grow_sigma``, make candidate footprints. A
candidate on a source of the template can be the PSF's difference between visits rather than an
artifact (a sharper image puts more of a star's flux in its core and less in a ring around it):
a footprint is clipped only if the excess summed over it grown by ``psf_radius`` pixels, where
core and ring cancel, is significant (``detect_sigma``) and more than ``max_psf_excess`` of the
template's own flux there. An artifact adds flux; a change of seeing moves it. A footprint clipped in more than half of the warps that cover it is something
of the sky, not of one epoch, and is kept in all. The clipped pixels (dilated by
``grow_pixels``) are left out of the mean for that warp and marked ``CLIPPED`` in the co-add.

Masks
-----
Input pixels with a ``bad_planes`` bit (``NO_DATA``, ``BAD``, ``SAT``) are left out; the co-add
marks them ``REJECTED`` and keeps the plane that caused it. The planes that describe used pixels
(``CR``, ``INTRP``, ``SUSPECT``, ``CROSSTALK``, ``STREAK``) are ORed over the inputs used;
single-frame detection planes are dropped. ``INEXACT_PSF`` marks every pixel where an input that
covers it was left out (its PSF is then not quite the CoaddPsf), ``NO_DATA`` pixels no input
reaches.

The variance is propagated exactly (``sum w_i^2 var_i / (sum w_i)^2``); ``NOISECOR`` is the
warps' factor from pixel variances to the variance of a large aperture, weighted like the pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import ndimage

from repo.errors import DrpError
from repo.exposure import Exposure, PhotoCalib

from .coadd_psf import CoaddPsf

#: Planes ORed from the inputs used at a pixel into the co-add's mask.
PROPAGATED_PLANES = ("CR", "INTRP", "SUSPECT", "CROSSTALK", "STREAK", "UNMASKEDNAN")


@dataclass(frozen=True)
class AssembleConfig:
    """Configuration of the co-add assembly.

    Attributes
    ----------
    bad_planes : list of str
        Input pixels with one of these planes are left out.
    reject_artifacts : bool
        Find and clip artifacts of single warps (see the module notes); at least 3 warps needed.
    detect_sigma, grow_sigma : float
        Thresholds of an artifact's peak and extent above the template (in noise sigmas).
    max_psf_excess : float
        A footprint is clipped only if its excess, summed over it grown by ``psf_radius``, is
        above this fraction of the template's flux there (and ``detect_sigma`` of its noise).
    psf_radius : int
        Pixels by which a footprint is grown to sum its excess: a sharper or blurrier image of a
        star has a core excess and a ring deficit that cancel within a few FWHM.
    grow_pixels : int
        Clipped footprints are dilated by this many pixels.
    """

    bad_planes: list[str] = field(default_factory=lambda: ["NO_DATA", "BAD", "SAT"])
    reject_artifacts: bool = True
    detect_sigma: float = 5.0
    grow_sigma: float = 2.5
    max_psf_excess: float = 0.1
    psf_radius: int = 6
    grow_pixels: int = 2


@dataclass
class CoaddResult:
    """The co-add and what the assembly found."""

    coadd: Exposure
    weights: dict[int, float]
    clipped_pixels: dict[int, int]
    clipped_footprints: int


def _grown(window: tuple[slice, slice], pad: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """A bounding box grown by ``pad`` pixels, clipped to the image."""
    return tuple(
        slice(max(w.start - pad, 0), min(w.stop + pad, n))
        for w, n in zip(window, shape, strict=True)
    )


def masked_median(images: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per-pixel median of a stack ``(n, ny, nx)`` over its usable values (NaN where none)."""
    return _masked_median(
        np.ascontiguousarray(images, np.float32), np.ascontiguousarray(usable, np.bool_)
    )


@numba.njit(cache=True, nogil=True)
def _masked_median(images, usable):
    n, ny, nx = images.shape
    out = np.full((ny, nx), np.nan, np.float32)
    values = np.empty(n, np.float32)
    for j in range(ny):
        for i in range(nx):
            m = 0
            for k in range(n):
                if usable[k, j, i]:
                    # insertion into the sorted values so far
                    v = images[k, j, i]
                    q = m
                    while q > 0 and values[q - 1] > v:
                        values[q] = values[q - 1]
                        q -= 1
                    values[q] = v
                    m += 1
            if m == 0:
                continue
            if m % 2:
                out[j, i] = values[m // 2]
            else:
                out[j, i] = 0.5 * (values[m // 2 - 1] + values[m // 2])
    return out


def warp_weight(warp: Exposure, bad_bits: int) -> float:
    """Inverse median variance of a warp's usable pixels (0 if it has none)."""
    good = ((warp.mask & bad_bits) == 0) & np.isfinite(warp.variance) & (warp.variance > 0)
    if not good.any():
        return 0.0
    return float(1.0 / np.median(warp.variance[good]))


def artifact_masks(
    images: np.ndarray, variances: np.ndarray, usable: np.ndarray, config: AssembleConfig
) -> tuple[np.ndarray, int]:
    """Pixels of each warp to clip as artifacts (bool, same shape as ``images``), and how many
    footprints were clipped. ``images`` etc. are stacks ``(n_warps, ny, nx)``."""
    n = images.shape[0]
    clipped = np.zeros(images.shape, bool)
    if n < 3:
        return clipped, 0
    count = usable.sum(axis=0)
    template = masked_median(images, usable)
    inv = np.where(usable, 1.0 / np.where(variances > 0, variances, np.inf), 0.0).sum(axis=0)
    template_var = np.where(inv > 0, (np.pi / 2.0) / np.maximum(inv, 1e-30), np.inf)
    comparable = count >= 3
    template_flux = np.where(comparable, np.nan_to_num(template), 0.0)
    structure = np.ones((3, 3), bool)
    candidates = []
    for i in range(n):
        sigma = np.sqrt(np.where(usable[i], variances[i], np.inf) + template_var)
        excess = np.where(usable[i] & comparable, images[i] - template, 0.0)
        significance = np.nan_to_num(excess / sigma, nan=0.0)
        labels, _ = ndimage.label(significance > config.grow_sigma, structure)
        # footprints above grow_sigma holding a pixel above detect_sigma (hysteresis)
        peaked = np.unique(labels[significance > config.detect_sigma])
        peaked = peaked[peaked > 0]
        if peaked.size == 0:
            candidates.append([])
            continue
        objects = ndimage.find_objects(labels)
        chosen = []
        for k in peaked:
            window = _grown(objects[k - 1], config.psf_radius, labels.shape)
            pixels = labels[window] == k
            around = ndimage.binary_dilation(pixels, structure, iterations=config.psf_radius)
            around &= usable[i][window]  # a footprint may run off this warp's data
            total = excess[window][around].sum()
            noise = np.sqrt((sigma[window][around] ** 2).sum())
            static = template_flux[window][around].sum()
            if total > config.detect_sigma * noise and total > config.max_psf_excess * static:
                chosen.append((window, pixels))
        candidates.append(chosen)
    votes = np.zeros(images.shape[1:], np.int16)
    for i, chosen in enumerate(candidates):
        for window, pixels in chosen:
            clipped[i][window] |= pixels
        votes += clipped[i]
    persistent = votes * 2 > np.maximum(count, 1)
    n_footprints = 0
    for i, chosen in enumerate(candidates):
        keep = np.zeros(images.shape[1:], bool)
        for window, pixels in chosen:
            if np.any(persistent[window][pixels]):
                continue
            keep[window] |= pixels
            n_footprints += 1
        if config.grow_pixels > 0 and keep.any():
            keep = ndimage.binary_dilation(keep, structure, iterations=config.grow_pixels)
        clipped[i] = keep & usable[i]
    return clipped, n_footprints


def assemble_coadd(
    warps: Mapping[int, Exposure], config: AssembleConfig | None = None, *, band: str = ""
) -> CoaddResult:
    """Co-add the warps of one patch and band (keyed by visit); see the module notes.

    Raises
    ------
    DrpError
        If there are no warps, they differ in shape, WCS or mask planes, or none has usable
        pixels.
    """
    config = config or AssembleConfig()
    if not warps:
        raise DrpError("a co-add needs at least one warp")
    visits = list(warps)
    first = warps[visits[0]]
    for visit in visits[1:]:
        warp = warps[visit]
        if warp.shape != first.shape or warp.mask_planes != first.mask_planes:
            raise DrpError(
                f"warp visit={visit}: shape or mask planes differ from visit={visits[0]}'s"
            )
    planes = first.mask_planes
    bad_bits = first.bits(*[p for p in config.bad_planes if p in planes])
    weights = {v: warp_weight(warps[v], bad_bits) for v in visits}
    used_visits = [v for v in visits if weights[v] > 0]
    if not used_visits:
        raise DrpError("no warp has usable pixels")
    images = np.stack([warps[v].image for v in used_visits]).astype(np.float32, copy=False)
    variances = np.stack([warps[v].variance for v in used_visits]).astype(np.float32, copy=False)
    masks = np.stack([warps[v].mask for v in used_visits])
    covers = (masks & first.bit("NO_DATA")) == 0
    usable = covers & ((masks & bad_bits) == 0) & np.isfinite(images) & np.isfinite(variances)
    if config.reject_artifacts:
        clipped, n_footprints = artifact_masks(images, variances, usable, config)
    else:
        clipped, n_footprints = np.zeros(images.shape, bool), 0
    used = usable & ~clipped
    w = np.array([weights[v] for v in used_visits], np.float64)[:, None, None]
    wsum = (w * used).sum(axis=0)
    has = wsum > 0
    safe = np.where(has, wsum, 1.0)
    image = np.where(has, (w * np.where(used, images, 0.0)).sum(axis=0) / safe, np.nan)
    variance = np.where(has, (w * w * np.where(used, variances, 0.0)).sum(axis=0) / safe**2, np.nan)
    propagate = first.bits(*[p for p in PROPAGATED_PLANES if p in planes])
    mask = np.bitwise_or.reduce(np.where(used, masks & propagate, 0), axis=0).astype(np.int32)
    rejected_by_mask = covers & ~usable
    mask |= np.bitwise_or.reduce(np.where(rejected_by_mask, masks & bad_bits, 0), axis=0)
    mask &= ~first.bit("NO_DATA")
    mask[rejected_by_mask.any(axis=0)] |= first.bit("REJECTED")
    mask[clipped.any(axis=0)] |= first.bit("CLIPPED")
    mask[(covers & ~used).any(axis=0)] |= first.bit("INEXACT_PSF")
    mask[~has] |= first.bit("NO_DATA")
    noise_factors = [float(warps[v].metadata.get("NOISECOR", 1.0)) for v in used_visits]
    total_weight = float(w.sum())
    psf_inputs = []
    for visit in used_visits:
        psf = warps[visit].psf
        if isinstance(psf, CoaddPsf):
            psf_inputs.extend(item.with_weight(item.weight * weights[visit]) for item in psf.inputs)
    metadata = {
        "BUNIT": "nJy",
        "NVISITS": len(used_visits),
        "NINPUTS": len(psf_inputs),
        "NOISECOR": float(np.dot(w.ravel(), noise_factors) / total_weight),
        "NCLIPPED": int(n_footprints),
    }
    if band:
        metadata["BAND"] = band
    coadd = Exposure(
        image=image.astype(np.float32),
        mask=mask,
        variance=variance.astype(np.float32),
        wcs=first.wcs,
        psf=CoaddPsf(psf_inputs) if psf_inputs else None,
        photo_calib=PhotoCalib(1.0),
        mask_planes=dict(planes),
        mask_plane_docs=dict(first.mask_plane_docs),
        metadata=metadata,
    )
    clipped_pixels = {v: int(clipped[k].sum()) for k, v in enumerate(used_visits)}
    return CoaddResult(coadd, weights, clipped_pixels, n_footprints)
