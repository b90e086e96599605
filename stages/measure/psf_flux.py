"""PSF fluxes: the linear least-squares amplitude of the PSF model at each source."""

from __future__ import annotations

import math

import numpy as np

from repo.psf import Psf

from .stamps import CHUNK, psf_kernels, shift_kernels, stamps


def psf_fluxes(
    image: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: Psf,
    ignore: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """PSF flux: linear least-squares amplitude of the PSF model centred at ``(x, y)``.

    ``flux = sum(K D) / sum(K^2)`` over the kernel's stamp (pixels on the image and not ignored),
    with ``K`` the unit-sum kernel shifted to the sub-pixel position; the error is
    ``sqrt(sum(K^2 V)) / sum(K^2)`` from the variance plane ``V``. Uniform weights keep the
    estimator unbiased for bright sources whose own photon noise is in ``V``. ``psfChi2`` is
    the reduced chi^2 of the fit within 2 FWHM of the centre.

    Returns ``psfFlux``, ``psfFluxErr``, ``psfChi2`` and ``flag_psfFlux``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0:
        empty = np.zeros(0)
        return {"psfFlux": empty, "psfFluxErr": empty, "psfChi2": empty, "flag_psfFlux": empty > 0}
    parts = [
        _psf_fluxes_chunk(image, variance, x[k : k + CHUNK], y[k : k + CHUNK], psf, ignore)
        for k in range(0, x.size, CHUNK)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _psf_fluxes_chunk(
    image: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: Psf,
    ignore: np.ndarray | None,
) -> dict[str, np.ndarray]:
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    kernels = shift_kernels(psf_kernels(psf, x, y), x - ix, y - iy)
    half = kernels.shape[-1] // 2
    data = stamps(image, ix, iy, half)
    var = stamps(variance, ix, iy, half)
    valid = stamps(np.ones(image.shape), ix, iy, half) > 0
    if ignore is not None:
        valid &= stamps(~ignore, ix, iy, half) > 0
    k = np.where(valid, kernels, 0.0)
    kk = (k * k).sum(axis=(1, 2))
    flux = (k * data).sum(axis=(1, 2)) / kk
    err = np.sqrt((k * k * np.where(valid, var, 0.0)).sum(axis=(1, 2))) / kk
    above_half = kernels > 0.5 * kernels.max(axis=(1, 2), keepdims=True)
    fwhm = 2.0 * np.sqrt(above_half.sum(axis=(1, 2)) / math.pi)
    offsets = np.arange(-half, half + 1)
    r2 = offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    core = valid & (r2 <= (2.0 * fwhm[:, None, None]) ** 2) & (var > 0)
    resid = np.where(core, (data - flux[:, None, None] * kernels) ** 2 / np.where(core, var, 1), 0)
    chi2 = resid.sum(axis=(1, 2)) / np.maximum(core.sum(axis=(1, 2)) - 1, 1)
    truncated = valid.sum(axis=(1, 2)) < kernels[0].size
    failed = ~np.isfinite(flux) | ~np.isfinite(err) | (kk <= 0)
    return {"psfFlux": flux, "psfFluxErr": err, "psfChi2": chi2, "flag_psfFlux": failed | truncated}
