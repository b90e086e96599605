"""Adaptive second moments: elliptical-Gaussian-weighted moments of sources (LSST's ``ixx``,
``iyy``, ``ixy``), solved for a stack of stamps at once."""

from __future__ import annotations

import numpy as np

from .stamps import CHUNK, stamps


def adaptive_moments_of_stamps(
    data: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    sigma0: np.ndarray | float = 2.0,
    max_iter: int = 50,
    tol: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Adaptive moments of a stack of stamps ``(n, s, s)`` (vectorized).

    Iterates an elliptical Gaussian weight of covariance ``C`` centred on the weighted centroid
    until ``C`` equals twice the weighted covariance (the fixed point at which a Gaussian is
    weighted by itself; ``C`` is then its covariance, as :func:`repo.psf.adaptive_sigma`).
    ``x0, y0`` are the starting centroids relative to the stamp centre.

    Returns ``ixx``, ``iyy``, ``ixy``, the centroid offsets ``dx``, ``dy`` from the stamp centre
    and ``failed`` (not converged, non-positive, or larger than the stamp).
    """
    n, sy, sx = data.shape
    yy, xx = np.mgrid[:sy, :sx]
    xx = (xx - (sx - 1) / 2.0)[None].astype(float)
    yy = (yy - (sy - 1) / 2.0)[None].astype(float)
    cx = np.array(x0, dtype=float) * np.ones(n)
    cy = np.array(y0, dtype=float) * np.ones(n)
    s2 = (np.asarray(sigma0, dtype=float) * np.ones(n)) ** 2
    cxx, cyy, cxy = s2.copy(), s2.copy(), np.zeros(n)
    converged = np.zeros(n, bool)
    limit = (min(sx, sy) / 4.0) ** 2
    active = np.arange(n)
    for _ in range(max_iter):
        if active.size == 0:
            break
        a = active
        det = cxx[a] * cyy[a] - cxy[a] * cxy[a]
        ok = (det > 0) & (cxx[a] > 0)  # positive definite
        det = np.where(ok, det, 1.0)
        ixx, iyy, ixy = cyy[a] / det, cxx[a] / det, -cxy[a] / det
        dx = xx - cx[a, None, None]
        dy = yy - cy[a, None, None]
        quad = ixx[:, None, None] * dx * dx + 2 * ixy[:, None, None] * dx * dy
        quad += iyy[:, None, None] * dy * dy
        # clipped both ways: a covariance that is not positive definite gives quad < 0
        w = data[a] * np.exp(-0.5 * np.clip(quad, -200.0, 200.0))
        total = w.sum(axis=(1, 2))
        good = ok & (total > 0)
        total = np.where(good, total, 1.0)
        wx, wy = w * dx, w * dy
        mx = wx.sum(axis=(1, 2)) / total
        my = wy.sum(axis=(1, 2)) / total
        # M: the weighted covariance; the fixed point is C = 2 M.
        mxx = (wx * dx).sum(axis=(1, 2)) / total - mx * mx
        myy = (wy * dy).sum(axis=(1, 2)) / total - my * my
        mxy = (wx * dy).sum(axis=(1, 2)) / total - mx * my
        change = 2.0 * np.abs(np.array([mxx, myy, mxy]) - 0.5 * np.array([cxx[a], cyy[a], cxy[a]]))
        change = change.max(axis=0)
        scale = np.maximum(2.0 * (np.abs(mxx) + np.abs(myy)), 1e-12)
        nxx, nyy, nxy, step_x, step_y = _moments_step(mxx, myy, mxy, mx, my, ixx, iyy, ixy)
        cx[a] = np.where(good, cx[a] + step_x, cx[a])
        cy[a] = np.where(good, cy[a] + step_y, cy[a])
        upd = good & (nxx > 0) & (nyy > 0) & (nxx * nyy - nxy * nxy > 0)
        cxx[a] = np.where(upd, np.clip(nxx, 0.05, limit), cxx[a])
        cyy[a] = np.where(upd, np.clip(nyy, 0.05, limit), cyy[a])
        cxy[a] = np.where(upd, nxy, cxy[a])
        done = upd & (change <= tol * scale) & (np.abs(mx) + np.abs(my) < 1e-4)
        converged[a] = done
        # Sources that converged, or whose weight degenerated, leave the iteration.
        active = a[~done & good]
    failed = ~converged | (cxx >= limit) | (cyy >= limit) | (np.hypot(cx, cy) > 3.0)
    return {"ixx": cxx, "iyy": cyy, "ixy": cxy, "dx": cx, "dy": cy, "failed": failed}


def _moments_step(mxx, myy, mxy, mx, my, ixx, iyy, ixy):
    """The next weight covariance and centroid step of the adaptive-moments iteration.

    For a Gaussian source of covariance ``S`` at offset ``d`` from a Gaussian weight of
    covariance ``C`` (inverse ``ixx, iyy, ixy``), the weighted covariance is
    ``M = (S^-1 + C^-1)^-1`` and the weighted mean offset ``m = M S^-1 d``; so
    ``S = (M^-1 - C^-1)^-1`` and ``d = S M^-1 m``, which this returns: one step solves a Gaussian
    source, and its fixed point is that of the plain iteration ``C <- 2 M``, ``d <- m`` (where
    ``C = S``, ``M = C / 2``), which converges only by halves. Where the Gaussian solution is not
    positive definite or moves the size by more than a factor 3 (noise, far from the solution)
    the plain step is taken.
    """
    det_m = mxx * myy - mxy * mxy
    ok = det_m > 0
    det_m = np.where(ok, det_m, 1.0)
    pxx, pyy, pxy = myy / det_m - ixx, mxx / det_m - iyy, -mxy / det_m - ixy
    det_p = pxx * pyy - pxy * pxy
    ok &= (det_p > 0) & (pxx > 0)
    det_p = np.where(ok, det_p, 1.0)
    sxx, syy, sxy = pyy / det_p, pxx / det_p, -pxy / det_p
    ratio = (sxx + syy) / np.maximum(2.0 * (mxx + myy), 1e-12)
    ok &= (ratio > 1.0 / 3.0) & (ratio < 3.0)
    ux, uy = (myy * mx - mxy * my) / det_m, (mxx * my - mxy * mx) / det_m  # M^-1 m
    return (
        np.where(ok, sxx, 2.0 * mxx),
        np.where(ok, syy, 2.0 * myy),
        np.where(ok, sxy, 2.0 * mxy),
        np.where(ok, sxx * ux + sxy * uy, mx),
        np.where(ok, sxy * ux + syy * uy, my),
    )


def adaptive_moments(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    sigma0: np.ndarray | float = 2.0,
    half_size: int = 15,
) -> dict[str, np.ndarray]:
    """Adaptive second moments of sources at ``(x, y)`` in an image (see
    :func:`adaptive_moments_of_stamps`); returns ``ixx``, ``iyy``, ``ixy`` (pixels^2), the
    adaptive centroid ``x``, ``y`` and ``failed``."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    sigma0 = np.broadcast_to(np.asarray(sigma0, dtype=float), x.shape)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    parts = [
        adaptive_moments_of_stamps(
            stamps(image, ix[k : k + CHUNK], iy[k : k + CHUNK], half_size),
            (x - ix)[k : k + CHUNK],
            (y - iy)[k : k + CHUNK],
            sigma0[k : k + CHUNK],
        )
        for k in range(0, x.size, CHUNK)
    ]
    names = ("ixx", "iyy", "ixy", "dx", "dy", "failed")
    result = {
        name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0) for name in names
    }
    result["failed"] = result["failed"].astype(bool)
    result["x"] = ix + result.pop("dx")
    result["y"] = iy + result.pop("dy")
    return result
