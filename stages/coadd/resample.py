"""Lanczos-3 resampling of an image, its variance and mask onto another pixel grid.

The mapping from output pixels to input pixels is computed exactly (through both WCSs) on a
coarse grid of nodes every ``step`` output pixels and interpolated bilinearly in between, as SWarp
and Rubin's warper do: the mapping is smooth, so a 16-pixel grid is exact to far below a
milli-pixel while the WCS transforms, the slow part, run on 1/256 of the pixels.

Each output pixel is the Lanczos-3 interpolation of the input at its mapped position (6 x 6
taps, the 1-D weights normalized to sum 1 so that a constant stays constant), multiplied by the
Jacobian determinant of the mapping (input pixels per output pixel: surface brightness per pixel
becomes flux per output pixel, so flux is conserved whatever the two pixel scales) and by a
photometric scale. Taps on NaN input pixels or pixels whose mask has a ``skip_bits`` bit are left
out and the weights renormalized. An output pixel whose nearest input pixel is off the image or
skipped, or whose good taps carry under half of the kernel, is ``NO_DATA``.

The variance of an output pixel is ``sum(w_k^2 var_k)`` (its own noise exactly; neighbouring
output pixels share inputs, so their noise is correlated). ``sum(w_k^2)`` is returned per pixel
too: for an aperture much larger than the kernel, the variance of its sum is the sum of the
pixel variances divided by the mean ``sum(w_k^2)`` (each input pixel's unit total weight spread
over several outputs), which is how co-add measurements correct their errors. The mask of an
output pixel is the OR of the masks of the 2 x 2 input pixels around its position (a mask grown
by the whole 6 x 6 kernel would lose a ring of pixels around every masked one).

The loops are compiled with numba (a warp of 2048^2 pixels takes ~0.2 s); numpy would need 36
full-size gathers per plane.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from astropy.wcs import WCS

#: Output pixels between nodes of the exactly computed mapping.
DEFAULT_GRID_STEP = 16


def mapping_grid(
    output_wcs: WCS, input_wcs: WCS, shape: tuple[int, int], step: int = DEFAULT_GRID_STEP
) -> tuple[np.ndarray, np.ndarray]:
    """Input pixel positions of output pixels on nodes every ``step`` pixels (and the last one).

    Returns ``(x, y)`` arrays of shape ``(ceil((ny - 1) / step) + 1, ceil((nx - 1) / step) + 1)``
    (0-based pixel coordinates); node ``(j, i)`` is output pixel ``(min(i step, nx - 1),
    min(j step, ny - 1))``, so the grid always reaches the last row and column.
    """
    ny, nx = shape
    gx = _node_positions(nx, step)
    gy = _node_positions(ny, step)
    xx, yy = np.meshgrid(gx, gy)
    sky = output_wcs.pixel_to_world_values(xx.ravel(), yy.ravel())
    x, y = input_wcs.world_to_pixel_values(*sky)
    return np.asarray(x, float).reshape(xx.shape), np.asarray(y, float).reshape(xx.shape)


def _node_positions(n: int, step: int) -> np.ndarray:
    nodes = np.arange(0, n - 1 + step, step, dtype=float)
    nodes[-1] = min(nodes[-1], n - 1)
    return nodes if nodes.size > 1 else np.array([0.0, max(n - 1, 1)], float)


def resample(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    grid_x: np.ndarray,
    grid_y: np.ndarray,
    shape: tuple[int, int],
    *,
    step: int = DEFAULT_GRID_STEP,
    scale: float = 1.0,
    skip_bits: int = 0,
    no_data_bit: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resample three planes onto an output grid given by :func:`mapping_grid`.

    Returns ``(image, variance, mask, sum_w2)`` of the output ``shape``: float32 image and
    variance (NaN where ``NO_DATA``), int32 mask (``no_data_bit`` set where no input), and
    float32 ``sum(w_k^2)`` of the normalized kernel (0 where ``NO_DATA``).
    """
    out_image = np.full(shape, np.nan, np.float32)
    out_var = np.full(shape, np.nan, np.float32)
    out_mask = np.full(shape, no_data_bit, np.int32)
    out_w2 = np.zeros(shape, np.float32)
    _resample(
        np.ascontiguousarray(image, np.float32),
        np.ascontiguousarray(variance, np.float32),
        np.ascontiguousarray(mask, np.int32),
        np.ascontiguousarray(grid_x, np.float64),
        np.ascontiguousarray(grid_y, np.float64),
        int(step),
        float(scale),
        np.int32(skip_bits),
        out_image,
        out_var,
        out_mask,
        out_w2,
        _WEIGHTS,
    )
    return out_image, out_var, out_mask, out_w2


def resample_kernel(kernel: np.ndarray, jacobian: np.ndarray, size: int) -> np.ndarray:
    """A PSF kernel image seen through a linear map: ``out(u) = kernel(c + J u)``, unit sum.

    ``jacobian`` is the 2 x 2 matrix of input pixels per output pixel (rows x, y of the input;
    columns x, y of the output); ``c`` is the kernel's central pixel. Lanczos-3 interpolation,
    as the pixels themselves are resampled. ``size`` (odd) is the output kernel's side.
    """
    half = size // 2
    u = np.arange(-half, half + 1, dtype=float)
    uu, vv = np.meshgrid(u, u)
    cy, cx = (np.array(kernel.shape) - 1) / 2.0
    x = cx + jacobian[0, 0] * uu + jacobian[0, 1] * vv
    y = cy + jacobian[1, 0] * uu + jacobian[1, 1] * vv
    values = _interpolate_points(np.ascontiguousarray(kernel, np.float64), x.ravel(), y.ravel())
    out = values.reshape(size, size) * abs(float(np.linalg.det(jacobian)))
    total = out.sum()
    return out / total if total > 0 else out


@numba.njit(cache=True, nogil=True, inline="always")
def _lanczos3_weights(frac: float, weights: np.ndarray) -> None:
    """1-D Lanczos-3 weights of taps at offsets -2..3 from floor(x), for x = floor(x) + frac.

    ``L(t) = 3 sin(pi t) sin(pi t / 3) / (pi t)^2`` with ``t = frac + 2 - m`` for tap ``m``; the
    sines of the six taps follow from two angles by the addition formulas. Normalized to sum 1.
    """
    total = 0.0
    s1 = math.sin(math.pi * frac)
    a = math.pi * frac / 3.0
    sa, ca = math.sin(a), math.cos(a)
    for m in range(6):
        t = frac + 2.0 - m
        if abs(t) < 1e-9:
            w = 1.0
        else:
            # sin(pi t) = sin(pi frac + (2 - m) pi) = (-1)^m sin(pi frac)
            sp = s1 if m % 2 == 0 else -s1
            # sin(pi t / 3) = sin(a + (2 - m) pi / 3)
            b = (2.0 - m) * math.pi / 3.0
            st = sa * math.cos(b) + ca * math.sin(b)
            w = 3.0 * sp * st / (math.pi * math.pi * t * t)
        weights[m] = w
        total += w
    for m in range(6):
        weights[m] /= total


#: Sub-pixel phases at which the Lanczos-3 weights are tabulated: the nearest phase is used, a
#: position error of at most 1/8192 pixel (0.02 mas at 0.2"/px), ~5x faster than computing them.
_PHASES = 4096


def _weight_table() -> np.ndarray:
    table = np.empty((_PHASES + 1, 6))
    for k in range(_PHASES + 1):
        _lanczos3_weights(k / _PHASES, table[k])
    return table


@numba.njit(cache=True, nogil=True, inline="always")
def _tabulated(table, frac, weights):
    row = table[int(frac * _PHASES + 0.5)]
    for m in range(6):
        weights[m] = row[m]


@numba.njit(cache=True, nogil=True)
def _resample(
    image, variance, mask, grid_x, grid_y, step, scale, skip_bits, out_image, out_var, out_mask,
    out_w2, table,
):  # fmt: skip
    ny_in, nx_in = image.shape
    ny, nx = out_image.shape
    gny, gnx = grid_x.shape
    wx = np.empty(6)
    wy = np.empty(6)
    scale2 = scale * scale
    for j in range(ny):
        cj = min(j // step, gny - 2)
        y0 = cj * step
        y1 = min(y0 + step, ny - 1)
        ty = (j - y0) / (y1 - y0) if y1 > y0 else 0.0
        for i in range(nx):
            ci = min(i // step, gnx - 2)
            x0 = ci * step
            x1 = min(x0 + step, nx - 1)
            tx = (i - x0) / (x1 - x0) if x1 > x0 else 0.0
            # bilinear interpolation of the mapping and its derivatives in this cell
            a00, a01 = grid_x[cj, ci], grid_x[cj, ci + 1]
            a10, a11 = grid_x[cj + 1, ci], grid_x[cj + 1, ci + 1]
            b00, b01 = grid_y[cj, ci], grid_y[cj, ci + 1]
            b10, b11 = grid_y[cj + 1, ci], grid_y[cj + 1, ci + 1]
            x = (a00 * (1 - tx) + a01 * tx) * (1 - ty) + (a10 * (1 - tx) + a11 * tx) * ty
            y = (b00 * (1 - tx) + b01 * tx) * (1 - ty) + (b10 * (1 - tx) + b11 * tx) * ty
            dxdi = ((a01 - a00) * (1 - ty) + (a11 - a10) * ty) / max(x1 - x0, 1)
            dydi = ((b01 - b00) * (1 - ty) + (b11 - b10) * ty) / max(x1 - x0, 1)
            dxdj = ((a10 - a00) * (1 - tx) + (a11 - a01) * tx) / max(y1 - y0, 1)
            dydj = ((b10 - b00) * (1 - tx) + (b11 - b01) * tx) / max(y1 - y0, 1)
            if not (x > -0.5 and x < nx_in - 0.5 and y > -0.5 and y < ny_in - 0.5):
                continue
            near_x = int(math.floor(x + 0.5))
            near_y = int(math.floor(y + 0.5))
            if mask[near_y, near_x] & skip_bits or not math.isfinite(image[near_y, near_x]):
                continue
            fx = math.floor(x)
            fy = math.floor(y)
            ix = int(fx)
            iy = int(fy)
            _tabulated(table, x - fx, wx)
            _tabulated(table, y - fy, wy)
            if 2 <= ix < nx_in - 3 and 2 <= iy < ny_in - 3:
                value, var, wsum, w2 = _window_inside(
                    image, variance, mask, ix, iy, wx, wy, skip_bits
                )
            else:
                value, var, wsum, w2 = _window_clipped(
                    image, variance, mask, ix, iy, wx, wy, skip_bits
                )
            if wsum < 0.5:
                continue
            m = 0
            for yy in range(max(iy, 0), min(iy + 2, ny_in)):
                for xx in range(max(ix, 0), min(ix + 2, nx_in)):
                    m |= mask[yy, xx]
            area = abs(dxdi * dydj - dxdj * dydi)
            out_image[j, i] = value / wsum * scale * area
            out_var[j, i] = var / (wsum * wsum) * scale2 * area * area
            out_mask[j, i] = m
            out_w2[j, i] = w2 / (wsum * wsum)


@numba.njit(cache=True, nogil=True, inline="always")
def _window_inside(image, variance, mask, ix, iy, wx, wy, skip_bits):
    """Sums over a 6 x 6 window inside the image: no bounds checks, and per-tap tests only
    when the window holds a skipped or NaN pixel."""
    bits = 0
    value = 0.0
    var = 0.0
    for q in range(6):
        row_value = 0.0
        row_var = 0.0
        yy = iy - 2 + q
        for p in range(6):
            xx = ix - 2 + p
            bits |= mask[yy, xx]
            row_value += wx[p] * image[yy, xx]
            row_var += wx[p] * wx[p] * variance[yy, xx]
        value += wy[q] * row_value
        var += wy[q] * wy[q] * row_var
    if bits & skip_bits or not math.isfinite(value):
        return _window_clipped(image, variance, mask, ix, iy, wx, wy, skip_bits)
    w2 = 0.0
    for q in range(6):
        for p in range(6):
            w2 += (wy[q] * wx[p]) ** 2
    return value, var, 1.0, w2


@numba.njit(cache=True, nogil=True)
def _window_clipped(image, variance, mask, ix, iy, wx, wy, skip_bits):
    """Sums over the good taps of a window that may leave the image or hold bad pixels."""
    ny_in, nx_in = image.shape
    value = 0.0
    var = 0.0
    wsum = 0.0
    w2 = 0.0
    for q in range(6):
        yy = iy - 2 + q
        if yy < 0 or yy >= ny_in:
            continue
        for p in range(6):
            xx = ix - 2 + p
            if xx < 0 or xx >= nx_in:
                continue
            v = image[yy, xx]
            if mask[yy, xx] & skip_bits or not math.isfinite(v):
                continue
            w = wy[q] * wx[p]
            value += w * v
            var += w * w * variance[yy, xx]
            wsum += w
            w2 += w * w
    return value, var, wsum, w2


@numba.njit(cache=True, nogil=True)
def _interpolate_points(image, xs, ys):
    """Lanczos-3 values of ``image`` at points (zero outside), weights normalized per axis."""
    ny, nx = image.shape
    out = np.zeros(xs.size)
    wx = np.empty(6)
    wy = np.empty(6)
    for k in range(xs.size):
        fx = math.floor(xs[k])
        fy = math.floor(ys[k])
        ix = int(fx)
        iy = int(fy)
        if ix < -3 or ix > nx + 2 or iy < -3 or iy > ny + 2:
            continue
        _lanczos3_weights(xs[k] - fx, wx)
        _lanczos3_weights(ys[k] - fy, wy)
        value = 0.0
        for q in range(6):
            yy = iy - 2 + q
            if yy < 0 or yy >= ny:
                continue
            for p in range(6):
                xx = ix - 2 + p
                if 0 <= xx < nx:
                    value += wy[q] * wx[p] * image[yy, xx]
        out[k] = value
    return out


_WEIGHTS = _weight_table()
