"""Matching a source catalog to a reference catalog projected into the image.

:func:`match_sources` makes no assumption that the initial WCS is close to right beyond the
search box: for each trial rotation about the image centre it histograms the pixel offsets of
every (bright source, bright reference) pair; the true offset piles up in one cell while wrong
pairs spread over the whole box. The best (rotation, offset) seeds an iterated nearest-neighbour
match with an affine transform whose radius shrinks as it converges. The peak must hold
``min_matches`` pairs and stand 5 Poisson sigmas above what random pairs put in a cell, else
the match fails loudly. Used by :func:`stages.calibrate.astrometry.calibrate_astrometry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

from repo.errors import DrpError

if TYPE_CHECKING:
    from .astrometry import AstrometryConfig


@dataclass
class CoarseMatch:
    """Result of :func:`match_sources`: matched indices and the affine map between them.

    ``transform`` is the 2x3 matrix taking reference pixel positions (as projected by the
    initial WCS) to source pixel positions: ``[x_s, y_s] = T[:, :2] @ [x_r, y_r] + T[:, 2]``.
    """

    source_index: np.ndarray
    ref_index: np.ndarray
    transform: np.ndarray
    peak_count: int
    rotation_deg: float


def _coarse_rotations(max_rotation_deg: float, bin_px: float, radius_px: float) -> np.ndarray:
    step = math.degrees(bin_px / max(radius_px, 1.0))
    n = int(math.ceil(max_rotation_deg / step))
    angles = np.linspace(-max_rotation_deg, max_rotation_deg, 2 * n + 1) if n else np.zeros(1)
    return angles[np.argsort(np.abs(angles), kind="stable")]  # ties go to the smaller rotation


def _rotate(dx: np.ndarray, dy: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return c * dx - s * dy, s * dx + c * dy


def _offset_peak(
    xs: np.ndarray, ys: np.ndarray, xr: np.ndarray, yr: np.ndarray, half: float, bin_px: float
) -> tuple[int, float, float, float]:
    """Peak of the 2-D histogram of source-minus-reference offsets.

    Returns the peak count, the median offset (dx, dy) of its pairs and the count a cell would
    hold by chance (random pairs spread over the search box).
    """
    dx = (xs[:, None] - xr[None, :]).ravel()
    dy = (ys[:, None] - yr[None, :]).ravel()
    keep = (np.abs(dx) < half) & (np.abs(dy) < half)
    dx, dy = dx[keep], dy[keep]
    if dx.size == 0:
        return 0, 0.0, 0.0, 0.0
    n_bins = max(2, int(math.ceil(2 * half / bin_px)))
    edges = np.linspace(-half, half, n_bins + 1)
    hist, _, _ = np.histogram2d(dx, dy, bins=(edges, edges))
    # 2x2 sums, so that a peak on a cell border is not split in two.
    summed = hist[:-1, :-1] + hist[1:, :-1] + hist[:-1, 1:] + hist[1:, 1:]
    i, j = np.unravel_index(np.argmax(summed), summed.shape)
    inside = (dx >= edges[i]) & (dx < edges[i + 2]) & (dy >= edges[j]) & (dy < edges[j + 2])
    chance = 4.0 * dx.size / n_bins**2
    return int(summed[i, j]), float(np.median(dx[inside])), float(np.median(dy[inside])), chance


def _fit_affine(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 affine map ref -> src (a shift when fewer than 3 pairs)."""
    if len(src) < 3:
        shift = np.mean(src - ref, axis=0)
        return np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    design = np.column_stack([ref, np.ones(len(ref))])
    coeffs, *_ = np.linalg.lstsq(design, src, rcond=None)
    return coeffs.T


def _apply_affine(transform: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ transform[:, :2].T + transform[:, 2]


def nearest_matches(
    source_xy: np.ndarray, predicted_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one nearest-neighbour pairs within ``radius``: (source_index, ref_index).

    Each reference takes its nearest source; a source claimed by several references keeps the
    closest one.
    """
    if len(source_xy) == 0 or len(predicted_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dist, src = cKDTree(source_xy).query(predicted_xy, distance_upper_bound=radius)
    ref = np.flatnonzero(np.isfinite(dist))
    src, dist = src[ref], dist[ref]
    order = np.argsort(dist, kind="stable")
    _, first = np.unique(src[order], return_index=True)
    keep = order[first]
    return src[keep], ref[keep]


def match_sources(
    source_xy: np.ndarray,
    ref_xy: np.ndarray,
    center: tuple[float, float],
    pixel_scale: float,
    config: AstrometryConfig,
    source_rank: np.ndarray | None = None,
    ref_rank: np.ndarray | None = None,
) -> CoarseMatch:
    """Match sources to reference stars whose pixel positions may be off by a shift and rotation.

    Parameters
    ----------
    source_xy : numpy.ndarray
        ``(n, 2)`` source pixel positions.
    ref_xy : numpy.ndarray
        ``(m, 2)`` reference positions projected with the initial WCS.
    center : tuple of float
        Pixel about which trial rotations turn (the image centre).
    pixel_scale : float
        Arcsec per pixel (converts the config's arcsec to pixels).
    config : AstrometryConfig
        Search box, histogram cell, rotation range and brightness cut.
    source_rank, ref_rank : numpy.ndarray, optional
        Brightness order keys (ascending = brightest first) of sources and references.

    Returns
    -------
    CoarseMatch

    Raises
    ------
    repo.errors.DrpError
        Too few sources or references, or no offset with at least ``min_matches`` pairs.
    """
    source_xy = np.asarray(source_xy, dtype=float).reshape(-1, 2)
    ref_xy = np.asarray(ref_xy, dtype=float).reshape(-1, 2)
    need = config.min_matches
    if len(source_xy) < need or len(ref_xy) < need:
        raise DrpError(
            f"astrometric match: {len(source_xy)} sources and {len(ref_xy)} reference stars; "
            f"at least {need} of each are needed"
        )
    bright_s = _brightest(source_rank, len(source_xy), config.n_brightest)
    bright_r = _brightest(ref_rank, len(ref_xy), config.n_brightest)
    cx, cy = center
    half = config.max_offset_arcsec / pixel_scale
    bin_px = config.bin_arcsec / pixel_scale
    radius = float(np.max(np.hypot(source_xy[:, 0] - cx, source_xy[:, 1] - cy)))
    best = (-1, 0.0, 0.0, 0.0, 0.0)
    for angle in _coarse_rotations(config.max_rotation_deg, bin_px, radius):
        rx, ry = _rotate(ref_xy[bright_r, 0] - cx, ref_xy[bright_r, 1] - cy, angle)
        count, dx, dy, chance = _offset_peak(
            source_xy[bright_s, 0] - cx, source_xy[bright_s, 1] - cy, rx, ry, half, bin_px
        )
        if count > best[0]:
            best = (count, float(angle), dx, dy, chance)
    count, angle, dx, dy, chance = best
    # The peak must stand out of the random pairs (5 sigma of Poisson) as well as count enough.
    required = max(need, math.ceil(chance + 5.0 * math.sqrt(chance)))
    if count < required:
        raise DrpError(
            f"astrometric match failed: the best offset within {config.max_offset_arcsec} arcsec "
            f"and {config.max_rotation_deg} deg has {count} pairs (< {required}; "
            f"{chance:.1f} expected by chance)"
        )
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shift = np.array([cx, cy]) + np.array([dx, dy]) - rot @ np.array([cx, cy])
    transform = np.column_stack([rot, shift])
    radius_px = 2.0 * bin_px
    src, ref = np.zeros(0, int), np.zeros(0, int)
    for _ in range(5):
        src, ref = nearest_matches(source_xy, _apply_affine(transform, ref_xy), radius_px)
        if len(src) < need:
            break
        transform = _fit_affine(source_xy[src], ref_xy[ref])
        resid = source_xy[src] - _apply_affine(transform, ref_xy[ref])
        rms = math.sqrt(float(np.mean(np.sum(resid**2, axis=1))))
        radius_px = max(3.0 * rms, config.match_radius_arcsec / pixel_scale)
    if len(src) < need:
        raise DrpError(f"astrometric match: only {len(src)} pairs survive refinement (< {need})")
    return CoarseMatch(src, ref, transform, count, angle)


def _brightest(rank: np.ndarray | None, n: int, limit: int) -> np.ndarray:
    if rank is None:
        return np.arange(min(n, limit))
    rank = np.where(np.isfinite(rank), rank, np.inf)
    return np.argsort(rank, kind="stable")[:limit]
