"""Drawing the PSF model's kernels in Fourier space, many at once.

The model of :mod:`stages.characterize.psf_model` is a sheared Moffat (atmosphere) convolved with a sheared
Gaussian (optics) and the pixel response. Each factor has a closed-form Fourier transform:

* Moffat of index ``beta`` and scale radius ``rd`` (untruncated, unit flux):
  ``M(q) = 2**(2 - beta) / Gamma(beta - 1) * q**(beta - 1) * K_{beta - 1}(q)`` with ``q = k rd``
  (``K`` the modified Bessel function of the second kind), tabulated once per index;
* Gaussian of covariance ``S``: ``exp(-k^T S k / 2)``;
* unit pixel (a box): ``sinc(kx / 2 pi) sinc(ky / 2 pi)``;

and a shear ``A`` (GalSim's matrix of the distortion ``e1, e2``; symmetric, unit determinant)
turns ``F(k)`` into ``F(A k)``. The product is sampled on the discrete frequencies of an
``N x N`` pixel grid, with every alias ``k + 2 pi (m, l)`` whose transform is above ``1e-5`` of
its peak folded in (that is what sampling the continuous image at pixel centres does, and what
matters for PSFs of a pixel or two), a phase ramp places the centre at a sub-pixel offset, and one
inverse real FFT per kernel gives the image, cropped to the kernel size and normalized to sum 1.

It draws the same images as GalSim (``drawImage(method="auto")`` of the same profiles, within
1e-6 of the peak for well-sampled PSFs; ``tests/test_psf_kspace.py``) about ten times faster,
because the grid is only as large as the kernel needs and all kernels are drawn in one vectorized
pass: PSF determination draws hundreds of kernels per detector.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import fft, special

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Transform values below this fraction of the peak are left out (aliases, far frequencies).
THRESHOLD = 1e-5
#: Step in ``q = k rd`` of the tabulated Moffat transform (linear interpolation error ~1e-7).
TABLE_STEP = 2e-3
#: Aliases are folded in up to this many sampling periods (PSFs down to ~0.3 pixel FWHM).
MAX_SHELLS = 3
_KMAX_QUANTUM = 0.05 * math.pi


@functools.lru_cache(maxsize=32)
def moffat_transform_table(beta: float) -> np.ndarray:
    """The unit-flux Moffat transform ``M(q)`` on ``q = 0, TABLE_STEP, ...`` until it is below
    1e-12 (values computed with the exponentially scaled Bessel function ``kve``)."""
    nu = beta - 1.0
    q = np.arange(0.0, 200.0, TABLE_STEP)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_m = nu * np.log(q) + np.log(special.kve(nu, q)) - q
        values = np.exp(log_m + (1.0 - nu) * math.log(2.0) - special.gammaln(nu))
    values[0] = 1.0
    values = np.where(np.isfinite(values), values, 0.0)
    last = int(np.flatnonzero(values > 1e-12)[-1]) + 2
    table = values[: min(last, values.size)]
    table.flags.writeable = False
    return table


def shear_matrix(e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GalSim's shear matrix ``[[a11, a12], [a12, a22]]`` of the distortion ``(e1, e2)``."""
    e = np.hypot(e1, e2)
    if np.any(e >= 1.0):
        raise ValueError(f"PSF drawing: distortion |e| must be < 1, got {float(np.max(e))}")
    to_g = 1.0 / (1.0 + np.sqrt(1.0 - e * e))
    g1, g2 = e1 * to_g, e2 * to_g
    norm = 1.0 / np.sqrt(1.0 - (g1 * g1 + g2 * g2))
    return norm * (1.0 + g1), norm * g2, norm * (1.0 - g1)


def _quadratic_form(a11, a12, a22, scale2):
    """Coefficients ``(cxx, cxy, cyy)`` of ``scale2 |A k|^2 = cxx kx^2 + cxy 2 kx ky + cyy ky^2``
    and its smallest eigenvalue (the widest direction in k)."""
    cxx = (a11 * a11 + a12 * a12) * scale2
    cxy = a12 * (a11 + a22) * scale2
    cyy = (a12 * a12 + a22 * a22) * scale2
    smallest = 0.5 * (cxx + cyy) - np.sqrt(0.25 * (cxx - cyy) ** 2 + cxy * cxy)
    return cxx, cxy, cyy, smallest


@functools.lru_cache(maxsize=64)
def _frequencies(n: int, kmax_quanta: int) -> tuple:
    """The rfft frequencies of an ``n x n`` grid and their aliases within ``kmax``.

    Returns ``kx, ky`` (the points, base grid first in rfft order), ``kxx, kxy, kyy``
    (``kx^2``, ``2 kx ky``, ``ky^2``), the pixel response at each point, ``bounds`` (the base
    grid is ``[0, bounds[1])``; the aliases of shell ``s`` are ``[bounds[s], bounds[s+1])``) and
    ``targets`` (the base-grid index each alias folds onto, per shell).
    """
    kmax = kmax_quanta * _KMAX_QUANTUM
    ky_base, kx_base = np.meshgrid(
        2.0 * np.pi * np.fft.fftfreq(n), 2.0 * np.pi * np.fft.rfftfreq(n), indexing="ij"
    )
    kx_base, ky_base = kx_base.ravel(), ky_base.ravel()
    index = np.arange(kx_base.size)
    kx, ky, targets = [kx_base], [ky_base], [index]
    shells = min(MAX_SHELLS, max(0, math.ceil((kmax - math.pi) / (2.0 * math.pi))))
    for m in range(-shells, shells + 1):
        for ell in range(-shells, shells + 1):
            if m == 0 and ell == 0:
                continue
            ax, ay = kx_base + 2.0 * np.pi * m, ky_base + 2.0 * np.pi * ell
            keep = np.hypot(ax, ay) <= kmax
            if keep.any():
                kx.append(ax[keep])
                ky.append(ay[keep])
                targets.append(index[keep])
    bounds = np.cumsum([0] + [a.size for a in kx])
    kx_all, ky_all = np.concatenate(kx), np.concatenate(ky)
    pixel = np.sinc(kx_all / (2.0 * np.pi)) * np.sinc(ky_all / (2.0 * np.pi))
    return (
        kx_all,
        ky_all,
        kx_all * kx_all,
        2.0 * kx_all * ky_all,
        ky_all * ky_all,
        pixel,
        bounds,
        targets,
    )


def _kmax(moffat_q: np.ndarray, table: np.ndarray, gauss: np.ndarray | None) -> np.ndarray:
    """Per kernel, the largest frequency at which its transform (along its widest direction) is
    above :data:`THRESHOLD`: ``moffat_q`` and ``gauss`` are the smallest eigenvalues of the
    Moffat's ``rd^2 A^2`` and of the Gaussian's ``sigma^2 B^2``."""
    k = np.linspace(0.0, (2 * MAX_SHELLS + 1) * math.pi, 2048)
    q = np.sqrt(moffat_q)[:, None] * k[None, :] / TABLE_STEP
    values = np.interp(q, np.arange(table.size), table, right=0.0)
    if gauss is not None:
        values = values * np.exp(-0.5 * gauss[:, None] * k[None, :] ** 2)
    above = values > THRESHOLD
    last = k.size - 1 - np.argmax(above[:, ::-1], axis=1)
    return np.where(above.any(axis=1), k[np.minimum(last + 1, k.size - 1)], math.pi)


#: The periodic grid is wide enough that the Moffat's flux beyond it is under this fraction.
WRAP_FLUX = 1e-5


def _grid_size(size: int, beta: float, rd: float) -> int:
    """Even FFT-friendly grid size, between 1.5 and 4 times the kernel size.

    The grid is periodic, so the kernel receives the flux of its copies: the grid reaches a
    radius beyond the kernel's edge outside which the Moffat (of scale radius ``rd``) has at
    most :data:`WRAP_FLUX` of its flux, ``(1 + (R / rd)^2)^(1 - beta)``. Shallow profiles need
    wide grids (beta 2.5: 46 ``rd``); beta >= 3.5 rarely needs more than 1.5 times the kernel.
    """
    wing = rd * math.sqrt(max(WRAP_FLUX ** (1.0 / (1.0 - beta)) - 1.0, 0.0))
    n = min(max(1.5 * size, size // 2 + wing), 4.0 * size)
    n = fft.next_fast_len(int(n) + 1, real=True)
    return n + n % 2


def draw_kernels(
    beta: float,
    atmosphere: tuple[np.ndarray, np.ndarray, np.ndarray],
    optical: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    size: int,
    dx: np.ndarray | float = 0.0,
    dy: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Kernels ``(n, size, size)`` of Moffat(beta) x Gaussian x pixel, normalized to sum 1.

    ``atmosphere`` is ``(fwhm, e1, e2)`` of the Moffat (pixels; distortions), one value per
    kernel; ``optical`` the same for the Gaussian, or ``None`` (no optical part). Each kernel is
    centred ``(dx, dy)`` pixels from the centre of the central pixel (``size`` is odd).
    """
    fwhm, e1, e2 = (np.atleast_1d(np.asarray(v, dtype=float)) for v in atmosphere)
    n_kernels = fwhm.size
    dx = np.broadcast_to(np.asarray(dx, dtype=float), (n_kernels,))
    dy = np.broadcast_to(np.asarray(dy, dtype=float), (n_kernels,))
    if size % 2 == 0 or size < 1:
        raise ValueError(f"PSF drawing: kernel size must be odd and positive, got {size}")
    if not (beta > 1.0) or np.any(fwhm <= 0):
        raise ValueError(f"PSF drawing: needs beta > 1 and FWHM > 0 (beta={beta})")
    table = moffat_transform_table(float(beta))
    rd = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    mxx, mxy, myy, m_min = _quadratic_form(*shear_matrix(e1, e2), rd * rd)
    if optical is not None:
        ofwhm, oe1, oe2 = (np.atleast_1d(np.asarray(v, dtype=float)) for v in optical)
        if np.any(ofwhm <= 0):
            raise ValueError("PSF drawing: optical FWHM must be > 0")
        sigma = ofwhm / FWHM_PER_SIGMA
        gxx, gxy, gyy, g_min = _quadratic_form(*shear_matrix(oe1, oe2), sigma * sigma)
    else:
        gxx = gxy = gyy = g_min = None
    # Each kernel's grid and frequencies depend on its own parameters only (kernels drawn alone
    # or with others are identical): group the kernels that share them.
    kmax_quanta = np.ceil(_kmax(m_min, table, g_min) / _KMAX_QUANTUM).astype(int)
    n_grids = np.array([_grid_size(size, beta, r) for r in rd])
    kernels = np.empty((n_kernels, size, size))
    for n_grid, quanta in set(zip(n_grids.tolist(), kmax_quanta.tolist(), strict=True)):
        sel = np.flatnonzero((n_grids == n_grid) & (kmax_quanta == quanta))
        gauss = None if optical is None else (gxx[sel], gxy[sel], gyy[sel])
        moffat = (mxx[sel], mxy[sel], myy[sel])
        kernels[sel] = _draw(table, moffat, gauss, dx[sel], dy[sel], size, n_grid, quanta)
    return kernels


def _draw(
    table: np.ndarray,
    moffat: tuple[np.ndarray, np.ndarray, np.ndarray],
    gauss: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    dx: np.ndarray,
    dy: np.ndarray,
    size: int,
    n_grid: int,
    kmax_quanta: int,
) -> np.ndarray:
    """Kernels on one grid: the transform's product at the frequencies (and folded aliases) of
    :func:`_frequencies`, a phase ramp for the offsets, an inverse real FFT, crop, normalize."""
    kx, ky, kxx, kxy, kyy, pixel, bounds, targets = _frequencies(n_grid, kmax_quanta)
    mxx, mxy, myy = moffat
    # Moffat: linear interpolation of the table at q = sqrt(rd^2 |A k|^2).
    q = np.sqrt(mxx[:, None] * kxx + mxy[:, None] * kxy + myy[:, None] * kyy)
    q *= 1.0 / TABLE_STEP
    i = np.minimum(q.astype(np.int64), table.size - 2)
    q -= i
    transform = table[i]
    transform += q * (table[i + 1] - transform)
    if gauss is not None:
        gxx, gxy, gyy = gauss
        transform *= np.exp(-0.5 * (gxx[:, None] * kxx + gxy[:, None] * kxy + gyy[:, None] * kyy))
    transform *= pixel
    if np.any(dx) or np.any(dy):
        transform = transform * np.exp(-1j * (dx[:, None] * kx + dy[:, None] * ky))
    folded = transform[:, : bounds[1]].astype(complex)
    for shell in range(1, len(targets)):
        folded[:, targets[shell]] += transform[:, bounds[shell] : bounds[shell + 1]]
    folded = folded.reshape(dx.size, n_grid, n_grid // 2 + 1)
    images = np.fft.irfft2(folded, s=(n_grid, n_grid))
    # The profile is centred on pixel (0, 0) of the periodic grid: take -half..half around it.
    half = size // 2
    rows = np.arange(-half, half + 1) % n_grid
    kernels = images[:, rows][:, :, rows]
    return kernels / kernels.sum(axis=(1, 2), keepdims=True)
