"""Cosmic-ray hits on a detector: straight tracks (muons) and compact spots, with their truth.

The number of hits in an exposure is Poisson with mean ``rate * megapixels * seconds``; 60% are
tracks and 40% spots.

Tracks
    Straight segments of length ``2 + Exponential(10)`` pixels (at most 80) at a uniform angle,
    depositing ``dE/dx`` electrons per pixel of length (log-normal, median 900, 0.3 dex-e
    scatter), spread bilinearly over the pixels along the path (about 2 pixels wide).
Spots
    Circular Gaussians of sigma 0.3-0.8 pixel holding a log-normal charge (median 3000 e-).

Deposits below :data:`DEPOSIT_FLOOR` electrons are dropped, so the truth mask is exactly the
set of pixels that received charge.
"""

from __future__ import annotations

import numpy as np

#: Deposits below this many electrons in a pixel are not made (the hit's faint fringe).
DEPOSIT_FLOOR = 10.0


def cosmic_ray_deposits(
    shape: tuple[int, int], exposure_time: float, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Electrons deposited by cosmic rays in each pixel of a detector during an exposure.

    Parameters
    ----------
    shape : tuple of int
        Detector shape (rows, columns).
    exposure_time : float
        Seconds of exposure (the dark time).
    rate : float
        Hits per megapixel per second.
    rng : numpy.random.Generator
        The cosmic-ray random stream.

    Returns
    -------
    deposits : numpy.ndarray
        float32 electrons per pixel (0 where nothing was deposited).
    n_hits : int
        Number of hits.
    """
    ny, nx = shape
    n_hits = int(rng.poisson(rate * nx * ny / 1e6 * exposure_time))
    is_track = rng.uniform(size=n_hits) < 0.6
    xs, ys, charges = [], [], []
    n_tracks = int(is_track.sum())
    if n_tracks:
        x, y, q = _track_points(rng, n_tracks, nx, ny)
        xs.append(x)
        ys.append(y)
        charges.append(q)
    n_spots = n_hits - n_tracks
    flat = np.zeros(nx * ny, dtype=float)
    if xs:
        _splat_bilinear(
            flat, np.concatenate(xs), np.concatenate(ys), np.concatenate(charges), nx, ny
        )
    if n_spots:
        _add_spots(flat, rng, n_spots, nx, ny)
    flat[flat < DEPOSIT_FLOOR] = 0.0
    return flat.reshape(ny, nx).astype(np.float32), n_hits


def _track_points(rng: np.random.Generator, n: int, nx: int, ny: int):
    """Points every 0.25 pixel along each track with the charge each carries."""
    length = np.minimum(2.0 + rng.exponential(10.0, n), 80.0)
    angle = rng.uniform(0.0, np.pi, n)
    x0 = rng.uniform(-0.5, nx - 0.5, n)
    y0 = rng.uniform(-0.5, ny - 0.5, n)
    dedx = rng.lognormal(np.log(900.0), 0.3, n)
    steps = np.ceil(length / 0.25).astype(int) + 1
    track = np.repeat(np.arange(n), steps)
    start = np.repeat(np.cumsum(steps) - steps, steps)
    t = (np.arange(steps.sum()) - start) / (steps[track] - 1) - 0.5
    x = x0[track] + t * length[track] * np.cos(angle[track])
    y = y0[track] + t * length[track] * np.sin(angle[track])
    charge = dedx[track] * length[track] / steps[track]
    return x, y, charge


def _splat_bilinear(
    flat: np.ndarray, x: np.ndarray, y: np.ndarray, q: np.ndarray, nx: int, ny: int
):
    ix = np.floor(x).astype(int)
    iy = np.floor(y).astype(int)
    fx = x - ix
    fy = y - iy
    for dx, dy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        px, py = ix + dx, iy + dy
        ok = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        flat += np.bincount(py[ok] * nx + px[ok], weights=(q * w)[ok], minlength=nx * ny)


def _add_spots(flat: np.ndarray, rng: np.random.Generator, n: int, nx: int, ny: int) -> None:
    x0 = rng.uniform(-0.5, nx - 0.5, n)
    y0 = rng.uniform(-0.5, ny - 0.5, n)
    sigma = rng.uniform(0.3, 0.8, n)
    charge = rng.lognormal(np.log(3000.0), 0.5, n)
    offsets = np.arange(-2, 3)
    dx, dy = np.meshgrid(offsets, offsets)
    px = np.rint(x0)[:, None] + dx.ravel()[None, :]
    py = np.rint(y0)[:, None] + dy.ravel()[None, :]
    w = np.exp(-((px - x0[:, None]) ** 2 + (py - y0[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
    w /= w.sum(axis=1, keepdims=True)
    q = (w * charge[:, None]).ravel()
    px = px.ravel().astype(int)
    py = py.ravel().astype(int)
    ok = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    flat += np.bincount(py[ok] * nx + px[ok], weights=q[ok], minlength=nx * ny)
