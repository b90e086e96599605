"""The PSF of a warp or co-add: the weighted sum of its inputs' PSFs, each seen through its warp.

A :class:`CoaddPsf` holds one :class:`PsfInput` per input detector image: its PSF model, the affine
map from output (patch) pixels to its own pixels (fitted to the exact mapping over the overlap;
the mapping's curvature over a PSF's size is far below what a kernel can show), its footprint in
output pixels (the detector's edges mapped, a convex quadrilateral) and its weight in the co-add.
At an output position the kernel is

    K(X, Y) = sum_i w_i K_i(J_i) / sum_i w_i      over the inputs whose footprint holds (X, Y)

where ``K_i(J_i)`` is input ``i``'s kernel at the mapped position, resampled through the map's
Jacobian with the Lanczos-3 kernel that resampled the pixels (:func:`.resample.resample_kernel`).
This is Rubin's CoaddPsf. It is exact where every input that covers a position was used there;
where an input was clipped or rejected, the co-add marks the pixels ``INEXACT_PSF``. Outside every
footprint the nearest input's kernel is given (a co-add's edge).

FITS: an ``EXTNAME = 'PSF'`` table (``PSFTYPE = 'COADD'``) with one row per input (visit,
detector, weight, affine map, corners, number of HDUs), then each input's own PSF HDUs renamed
``PSF_C<k>`` and ``PSF_C<k>_<suffix>`` (their ``PSF`` and ``PSF_<suffix>``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits

from repo.errors import CorruptDatasetError, DrpError
from repo.psf import Psf

from .resample import resample_kernel


@dataclass(frozen=True)
class PsfInput:
    """One input image of a co-add as its PSF sees it.

    Attributes
    ----------
    psf : Psf
        The input's PSF model, in its own pixels.
    affine : numpy.ndarray
        2 x 3 matrix: input pixel ``(x, y) = affine @ (X, Y, 1)`` for output pixel ``(X, Y)``.
    corners : numpy.ndarray
        4 x 2 output-pixel corners of the input's footprint, in order around it.
    weight : float
        Weight of the input in the co-add.
    visit, detector : int
        Which input it is.
    """

    psf: Psf
    affine: np.ndarray
    corners: np.ndarray
    weight: float
    visit: int
    detector: int

    def contains(self, x: float, y: float) -> bool:
        """Whether output pixel ``(x, y)`` lies inside the footprint (convex, either winding)."""
        c = self.corners
        edges = np.roll(c, -1, axis=0) - c
        cross = edges[:, 0] * (y - c[:, 1]) - edges[:, 1] * (x - c[:, 0])
        return bool(np.all(cross >= 0) or np.all(cross <= 0))

    def with_weight(self, weight: float) -> PsfInput:
        """The same input with another weight."""
        return PsfInput(
            self.psf, self.affine, self.corners, float(weight), self.visit, self.detector
        )


def fit_affine(
    out_x: np.ndarray, out_y: np.ndarray, in_x: np.ndarray, in_y: np.ndarray
) -> np.ndarray:
    """Least-squares 2 x 3 affine map from output to input pixel positions."""
    design = np.column_stack([out_x.ravel(), out_y.ravel(), np.ones(out_x.size)])
    coef_x = np.linalg.lstsq(design, in_x.ravel(), rcond=None)[0]
    coef_y = np.linalg.lstsq(design, in_y.ravel(), rcond=None)[0]
    return np.vstack([coef_x, coef_y])


#: Kernel images a CoaddPsf keeps (by position) before it forgets them all.
_KERNEL_CACHE_SIZE = 512


class CoaddPsf(Psf):
    """Weighted sum of the warped PSFs of the inputs covering a position (see the module notes)."""

    type_name = "COADD"

    def __init__(self, inputs: Sequence[PsfInput]) -> None:
        if not inputs:
            raise DrpError("CoaddPsf needs at least one input")
        self.inputs = tuple(inputs)
        self._centres = np.array([i.corners.mean(axis=0) for i in self.inputs])
        self._kernels: dict[tuple[float, float], np.ndarray] = {}

    def __repr__(self) -> str:
        return f"CoaddPsf({len(self.inputs)} inputs)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CoaddPsf) or len(other.inputs) != len(self.inputs):
            return False
        return all(
            a.psf == b.psf
            and np.array_equal(a.affine, b.affine)
            and np.array_equal(a.corners, b.corners)
            and (a.weight, a.visit, a.detector) == (b.weight, b.visit, b.detector)
            for a, b in zip(self.inputs, other.inputs, strict=True)
        )

    def covering(self, x: float, y: float) -> list[PsfInput]:
        """The inputs whose footprint holds output pixel ``(x, y)`` (the nearest if none)."""
        found = [i for i in self.inputs if i.contains(x, y)]
        if not found:
            nearest = int(np.argmin(np.hypot(*(self._centres - [x, y]).T)))
            found = [self.inputs[nearest]]
        return found

    @functools.cached_property
    def kernel_size(self) -> int:
        """Side of every kernel image: the largest of the inputs' kernels (at their centres), so
        that kernels at all positions have one shape."""
        size = 1
        for item, centre in zip(self.inputs, self._centres, strict=True):
            ix, iy = item.affine @ np.array([centre[0], centre[1], 1.0])
            size = max(size, item.psf.kernel_image(float(ix), float(iy)).shape[0])
        return size | 1

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        # measurements ask for the same positions several times (fluxes, then shapes)
        key = (float(x), float(y))
        if key not in self._kernels:
            if len(self._kernels) >= _KERNEL_CACHE_SIZE:
                self._kernels.clear()
            self._kernels[key] = self._kernel_at(*key)
        return self._kernels[key].copy()

    def _kernel_at(self, x: float, y: float) -> np.ndarray:
        covering = self.covering(x, y)
        kernels = []
        for item in covering:
            ix, iy = item.affine @ np.array([x, y, 1.0])
            kernels.append(item.psf.kernel_image(float(ix), float(iy)))
        size = self.kernel_size
        total = np.zeros((size, size))
        weight = 0.0
        for item, kernel in zip(covering, kernels, strict=True):
            total += item.weight * resample_kernel(kernel, item.affine[:, :2], size)
            weight += item.weight
        total /= weight if weight > 0 else len(covering)
        return total / total.sum()

    def enclosed_fraction(self, x: float, y: float, radius: float) -> float:
        """Weighted mean of the covering inputs' enclosed fractions, each within the radius in
        its own pixels (``radius * sqrt(|det J|)``), so that the inputs' wings beyond their
        kernel images count."""
        total = 0.0
        weight = 0.0
        for item in self.covering(x, y):
            ix, iy = item.affine @ np.array([x, y, 1.0])
            scale = math.sqrt(abs(float(np.linalg.det(item.affine[:, :2]))))
            total += item.weight * item.psf.enclosed_fraction(float(ix), float(iy), radius * scale)
            weight += item.weight
        return total / weight if weight > 0 else float("nan")

    def to_hdus(self) -> list[fits.ImageHDU | fits.BinTableHDU]:
        nested = [item.psf.to_hdus() for item in self.inputs]
        columns = [
            fits.Column("visit", "K", array=[i.visit for i in self.inputs]),
            fits.Column("detector", "K", array=[i.detector for i in self.inputs]),
            fits.Column("weight", "D", array=[i.weight for i in self.inputs]),
            fits.Column("affine", "6D", array=np.array([i.affine.ravel() for i in self.inputs])),
            fits.Column("corners", "8D", array=np.array([i.corners.ravel() for i in self.inputs])),
            fits.Column("n_hdus", "J", array=[len(h) for h in nested]),
        ]
        table = fits.BinTableHDU.from_columns(columns, name="PSF")
        table.header["PSFTYPE"] = (self.type_name, "PSF model type")
        table.header["PSFMOD"] = (__name__, "module defining the PSF type")
        hdus: list[Any] = [table]
        for k, component in enumerate(nested):
            for hdu in component:
                hdu = hdu.copy()
                name = hdu.name
                hdu.name = f"PSF_C{k}" if name == "PSF" else f"PSF_C{k}_{name[4:]}"
                hdus.append(hdu)
        return hdus

    @classmethod
    def _from_hdus(cls, hdus: Sequence[Any]) -> CoaddPsf:
        data = hdus[0].data
        inputs = []
        offset = 1
        for k, row in enumerate(data):
            count = int(row["n_hdus"])
            component = []
            for hdu in hdus[offset : offset + count]:
                hdu = hdu.copy()
                prefix = f"PSF_C{k}"
                if not hdu.name.startswith(prefix):
                    raise CorruptDatasetError(f"PSF: expected HDU {prefix}*, got {hdu.name}")
                rest = hdu.name[len(prefix) :]
                hdu.name = "PSF" if not rest else "PSF" + rest
                component.append(hdu)
            offset += count
            inputs.append(
                PsfInput(
                    Psf.from_hdus(component),
                    np.asarray(row["affine"], float).reshape(2, 3),
                    np.asarray(row["corners"], float).reshape(4, 2),
                    float(row["weight"]),
                    int(row["visit"]),
                    int(row["detector"]),
                )
            )
        return cls(inputs)
