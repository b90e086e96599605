"""Cut-outs and PSF kernels for the stamp-based measurements (PSF fluxes, adaptive moments,
cosmic-ray and classification checks), which measure sources :data:`CHUNK` at a time."""

from __future__ import annotations

import numpy as np

from repo.psf import Psf

#: Sources measured together in the stamp-based measurements (bounds their memory).
CHUNK = 512


def stamps(image: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int) -> np.ndarray:
    """``(n, 2 half + 1, 2 half + 1)`` cut-outs centred on integer pixels, zero off the image."""
    ny, nx = image.shape
    offsets = np.arange(-half, half + 1)
    rows = np.asarray(iy, int)[:, None] + offsets
    cols = np.asarray(ix, int)[:, None] + offsets
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    cut = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    return np.where(inside, cut, 0).astype(np.float64)


def shift_kernels(kernels: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Shift centred kernels ``(n, s, s)`` by sub-pixel ``(dx, dy)`` (Fourier phase ramp)."""
    n, sy, sx = kernels.shape
    fy = np.fft.fftfreq(sy)[None, :, None]
    fx = np.fft.rfftfreq(sx)[None, None, :]
    phase = np.exp(
        -2j * np.pi * (fx * np.asarray(dx)[:, None, None] + fy * np.asarray(dy)[:, None, None])
    )
    return np.fft.irfft2(np.fft.rfft2(kernels) * phase, s=(sy, sx))


def psf_kernels(psf: Psf, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """PSF kernels at positions ``(n, s, s)``, centred on the central pixel."""
    batch = getattr(psf, "kernel_images", None)
    if batch is not None:
        return batch(x, y)
    return np.array([psf.kernel_image(float(a), float(b)) for a, b in zip(x, y, strict=True)])
