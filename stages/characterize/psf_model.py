"""The single-visit PSF model: the camera's optical PSF convolved with a fitted atmosphere.

:class:`OpticalAtmospherePsf` is the PSF of one (visit, detector). It has two parts:

* the **optical** (telescope/camera) part, known from the instrument model (our stand-in for
  wavefront sensing and metrology): an elliptical Gaussian whose FWHM and ellipticity are sampled
  from :meth:`repo.instruments.simcam.SimCam.optical_psf_params` (the parameters of its
  ``optical_psf``) on a grid of nodes covering the detector and half its size beyond each edge,
  interpolated with bicubic splines (:class:`OpticalField`); absent (``None``) when
  the instrument has no optical model (real DECam data), and the atmosphere alone is then the PSF;
* the **atmospheric** part, fitted per visit (:mod:`stages.characterize.psf_determination`): a Moffat profile
  of index ``beta`` whose FWHM and ellipticity (distortions ``e1``, ``e2``) are polynomials in the
  pixel position (:class:`MoffatField`).

The PSF at ``(x, y)`` is their convolution with the pixel response, drawn in Fourier space
(:mod:`stages.characterize.psf_kspace`: the images GalSim, the simulator's renderer, draws from
:meth:`OpticalAtmospherePsf.profile`, many at once). Drawing still costs a fraction of a
millisecond, so :meth:`kernel_image` interpolates (cubic, Catmull-Rom) between kernels drawn once
at the nodes of a grid (spacing at most ``grid_spacing`` pixels) and cached; :meth:`render` and
:meth:`render_many` draw the exact model at any position and sub-pixel offset.

FITS form (``PSFTYPE = 'OPTATM'``): HDU ``PSF`` holds the atmospheric polynomial coefficients
(rows ``fwhm``, ``e1``, ``e2``) with the scalar parameters as header cards; HDU ``PSF_OPTICAL``
(only with an optical part) holds the optical node values (planes ``fwhm``, ``e1``, ``e2``). All
values are float64, so the round trip is exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.interpolate import RectBivariateSpline

from repo.errors import CorruptDatasetError
from repo.formatters.fits import exact_float_card
from repo.psf import Psf

from .psf_kspace import draw_kernels

#: GalSim accuracy used to draw the model (as the simulator: 0.1% folding, 1e-4 k-space cut).
FOLDING_THRESHOLD = 1e-3
MAXK_THRESHOLD = 1e-4


def polynomial_terms(u: Any, v: Any, degree: int) -> np.ndarray:
    """Terms ``u**i * v**j`` (``i + j <= degree``, u powers fastest) as shape ``(nterms, ...)``."""
    u = np.asarray(u, dtype=float)
    v = np.asarray(v, dtype=float)
    return np.array([u**i * v**j for j in range(degree + 1) for i in range(degree + 1 - j)])


def n_polynomial_terms(degree: int) -> int:
    """Number of terms of a 2-D polynomial of total degree ``degree``."""
    return (degree + 1) * (degree + 2) // 2


@dataclass(frozen=True)
class MoffatField:
    """A Moffat atmospheric PSF whose FWHM and ellipticity vary as polynomials over a detector.

    With ``u = (x - xc) / xs`` and ``v = (y - yc) / ys`` (``xc, yc`` the detector centre and
    ``xs, ys`` half its size), ``fwhm(x, y) = sum_k fwhm_coeffs[k] * t_k(u, v)`` (pixels), and the
    same for ``e1`` and ``e2`` (distortions in the detector pixel frame), with the terms ``t_k``
    of :func:`polynomial_terms`.

    Parameters
    ----------
    beta : float
        Moffat index (> 1).
    coeffs : numpy.ndarray
        ``(3, nterms)`` coefficients of fwhm, e1 and e2.
    width, height : int
        Detector size in pixels (fixes the normalization of ``u, v``).
    """

    beta: float
    coeffs: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        coeffs = np.array(self.coeffs, dtype=np.float64)
        if coeffs.ndim != 2 or coeffs.shape[0] != 3:
            raise ValueError(f"MoffatField: coeffs must have shape (3, nterms), got {coeffs.shape}")
        degree = (math.isqrt(8 * coeffs.shape[1] + 1) - 3) // 2
        if n_polynomial_terms(degree) != coeffs.shape[1]:
            raise ValueError(f"MoffatField: {coeffs.shape[1]} is not a 2-D polynomial's terms")
        if not (math.isfinite(self.beta) and self.beta > 1.0):
            raise ValueError(f"MoffatField: beta must be finite and > 1, got {self.beta}")
        if not np.isfinite(coeffs).all():
            raise ValueError("MoffatField: coefficients must be finite")
        coeffs.flags.writeable = False
        object.__setattr__(self, "coeffs", coeffs)
        object.__setattr__(self, "beta", float(self.beta))

    @property
    def degree(self) -> int:
        """Total degree of the polynomials."""
        return (math.isqrt(8 * self.coeffs.shape[1] + 1) - 3) // 2

    def normalized(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Normalized coordinates ``(u, v)`` in [-1, 1] over the detector."""
        xs, ys = 0.5 * (self.width - 1), 0.5 * (self.height - 1)
        return (np.asarray(x, float) - xs) / xs, (np.asarray(y, float) - ys) / ys

    def terms(self, x: Any, y: Any) -> np.ndarray:
        """Polynomial terms at pixel positions, shape ``(nterms, ...)``."""
        u, v = self.normalized(x, y)
        return polynomial_terms(u, v, self.degree)

    def params(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FWHM (pixels), e1 and e2 at pixel positions."""
        values = np.tensordot(self.coeffs, self.terms(x, y), axes=1)
        return values[0], values[1], values[2]


@dataclass(frozen=True)
class OpticalField:
    """The optical PSF (an elliptical Gaussian) sampled on a grid of nodes over a detector.

    Parameters
    ----------
    values : numpy.ndarray
        ``(3, ny_nodes, nx_nodes)``: FWHM (pixels), e1 and e2 at the nodes, which are equally
        spaced from ``-(width - 1) / 2`` to ``3 (width - 1) / 2`` along x (the same along y):
        the detector and half its size beyond each edge, so that the kernel cache of
        :class:`OpticalAtmospherePsf` (whose nodes reach one step beyond the detector) never
        extrapolates. Farther positions take the nearest border value.
    width, height : int
        Detector size in pixels.
    """

    values: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        if values.ndim != 3 or values.shape[0] != 3 or min(values.shape[1:]) < 4:
            raise ValueError(
                f"OpticalField: values must have shape (3, ny>=4, nx>=4), got {values.shape}"
            )
        if not np.isfinite(values).all() or not (values[0] > 0).all():
            raise ValueError("OpticalField: values must be finite with positive FWHM")
        values.flags.writeable = False
        object.__setattr__(self, "values", values)
        xn, yn = self.nodes()
        splines = [RectBivariateSpline(yn, xn, plane, kx=3, ky=3) for plane in values]
        object.__setattr__(self, "_splines", splines)

    def nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Node positions along x and along y (pixels)."""
        ny, nx = self.values.shape[1:]
        return _extended_nodes(self.width, nx), _extended_nodes(self.height, ny)

    @classmethod
    def from_camera(
        cls, camera: Any, detector: int, band: str, width: int, height: int, n_nodes: int = 13
    ) -> OpticalField:
        """Sample ``camera.optical_psf_params(detector, x, y, band)`` on ``n_nodes`` per axis."""
        xn = _extended_nodes(width, n_nodes)
        yn = _extended_nodes(height, n_nodes)
        xx, yy = np.meshgrid(xn, yn)
        fwhm, e1, e2 = camera.optical_psf_params(detector, xx, yy, band)
        values = np.array([fwhm, e1, e2], dtype=float).reshape(3, n_nodes, n_nodes)
        return cls(values, width, height)

    def params(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FWHM (pixels), e1 and e2 at pixel positions (bicubic spline between nodes)."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        out = [s(y, x, grid=False) for s in self._splines]  # type: ignore[attr-defined]
        return out[0], out[1], out[2]


def grid_spacing_for(
    atmosphere: MoffatField,
    optical: OpticalField | None,
    max_spacing: float = 128.0,
    tolerance: float = 5e-3,
) -> float:
    """Node step (pixels) of the kernel cache for a PSF whose size varies over the detector.

    The step keeps the error of *linear* interpolation of the log FWHM ``f`` within
    ``tolerance``: about ``h^2 |f''| / 8`` over a step ``h``, plus the broadening from mixing
    kernels of different sizes, about ``(h |f'| / 2)^2 / 2``, with ``f`` from the FWHM of the
    parts (in quadrature) on a 17 x 17 grid. The cache interpolates cubically, whose errors are
    far smaller (about 1e-4 in size at the default on the simulated camera). The step is at
    least 8 pixels.
    """
    n = 17
    xs = np.linspace(0.0, atmosphere.width - 1, n)
    ys = np.linspace(0.0, atmosphere.height - 1, n)
    xx, yy = np.meshgrid(xs, ys)
    fwhm2 = atmosphere.params(xx, yy)[0] ** 2
    if optical is not None:
        fwhm2 = fwhm2 + optical.params(xx, yy)[0] ** 2
    log_fwhm = 0.5 * np.log(fwhm2)
    hx, hy = xs[1] - xs[0], ys[1] - ys[0]
    slope = max(
        np.abs(np.diff(log_fwhm, axis=1)).max() / hx,
        np.abs(np.diff(log_fwhm, axis=0)).max() / hy,
        1e-12,
    )
    curvature = max(
        np.abs(np.diff(log_fwhm, 2, axis=1)).max() / hx**2,
        np.abs(np.diff(log_fwhm, 2, axis=0)).max() / hy**2,
        1e-15,
    )
    step = min(math.sqrt(8.0 * tolerance / curvature), 2.0 * math.sqrt(2.0 * tolerance) / slope)
    return float(np.clip(step, 8.0, max_spacing))


@functools.cache
def _gsparams() -> Any:
    """GalSim's accuracy settings of the model (made once: they cost a fraction of a draw)."""
    import galsim

    return galsim.GSParams(folding_threshold=FOLDING_THRESHOLD, maxk_threshold=MAXK_THRESHOLD)


def _extended_nodes(length: int, n: int) -> np.ndarray:
    """``n`` equally spaced nodes from ``-(length - 1) / 2`` to ``3 (length - 1) / 2``."""
    return np.linspace(-0.5 * (length - 1), 1.5 * (length - 1), n)


def _nodes(length: int, n: int) -> np.ndarray:
    """``n`` equally spaced nodes from pixel 0 to ``length - 1`` and one more beyond each end."""
    inner = np.linspace(0.0, length - 1, n)
    step = inner[1] - inner[0]
    return np.concatenate([[-step], inner, [inner[-1] + step]])


def _catmull_rom(t: np.ndarray) -> np.ndarray:
    """Catmull-Rom weights ``(4, n)`` of the nodes at offsets -1, 0, 1, 2 for ``0 <= t < 1``."""
    t2, t3 = t * t, t * t * t
    return 0.5 * np.array([-t3 + 2 * t2 - t, 3 * t3 - 5 * t2 + 2, -3 * t3 + 4 * t2 + t, t3 - t2])


class OpticalAtmospherePsf(Psf):
    """Optical part (from the instrument model) convolved with a fitted Moffat atmosphere.

    Parameters
    ----------
    atmosphere : MoffatField
        The fitted atmospheric part.
    optical : OpticalField or None
        The optical part; ``None`` when no instrument model is available.
    kernel_size : int
        Odd size of the kernel images.
    grid_spacing : float
        Largest distance in pixels between the nodes at which :meth:`kernel_image` draws and
        caches kernels (it interpolates between them).
    """

    type_name = "OPTATM"

    def __init__(
        self,
        atmosphere: MoffatField,
        optical: OpticalField | None,
        kernel_size: int = 41,
        grid_spacing: float = 64.0,
    ) -> None:
        if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size % 2 == 0:
            raise ValueError(f"OpticalAtmospherePsf: kernel_size must be odd, got {kernel_size}")
        if not (math.isfinite(grid_spacing) and grid_spacing > 0):
            raise ValueError(f"OpticalAtmospherePsf: grid_spacing must be > 0: {grid_spacing}")
        if optical is not None and (optical.width, optical.height) != (
            atmosphere.width,
            atmosphere.height,
        ):
            raise ValueError("OpticalAtmospherePsf: optical and atmospheric parts differ in size")
        self.atmosphere = atmosphere
        self.optical = optical
        self.kernel_size = int(kernel_size)
        self.grid_spacing = float(grid_spacing)
        self.width, self.height = atmosphere.width, atmosphere.height
        nx = max(3, math.ceil((self.width - 1) / self.grid_spacing) + 1)
        ny = max(3, math.ceil((self.height - 1) / self.grid_spacing) + 1)
        # Nodes over the detector plus one beyond each edge (for the cubic interpolation).
        self._x_nodes = _nodes(self.width, nx)
        self._y_nodes = _nodes(self.height, ny)
        self._node_kernels: dict[tuple[int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        return (
            f"OpticalAtmospherePsf(beta={self.atmosphere.beta}, degree={self.atmosphere.degree}, "
            f"optical={'yes' if self.optical is not None else 'no'}, size={self.kernel_size})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OpticalAtmospherePsf):
            return NotImplemented
        same_optical = (self.optical is None) == (other.optical is None) and (
            self.optical is None or np.array_equal(self.optical.values, other.optical.values)
        )
        a, b = self.atmosphere, other.atmosphere
        return (
            same_optical
            and (a.beta, a.width, a.height) == (b.beta, b.width, b.height)
            and np.array_equal(a.coeffs, b.coeffs)
            and (self.kernel_size, self.grid_spacing) == (other.kernel_size, other.grid_spacing)
        )

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------------------ rendering
    def profile(self, x: float, y: float) -> Any:
        """The GalSim profile (unit flux, pixel units, no pixel response) at ``(x, y)``."""
        import galsim

        gsparams = _gsparams()
        fwhm, e1, e2 = (float(p) for p in self.atmosphere.params(x, y))
        profile = galsim.Moffat(beta=self.atmosphere.beta, fwhm=fwhm, gsparams=gsparams)
        profile = profile.shear(e1=e1, e2=e2)
        if self.optical is not None:
            ofwhm, oe1, oe2 = (float(p) for p in self.optical.params(x, y))
            optical = galsim.Gaussian(fwhm=ofwhm, gsparams=gsparams).shear(e1=oe1, e2=oe2)
            profile = galsim.Convolve(profile, optical, gsparams=gsparams)
        return profile

    def render(self, x: float, y: float, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """The exact model at ``(x, y)`` drawn with the pixel response, centred ``offset`` pixels
        from the central pixel's centre, normalized to sum 1."""
        return self.render_many([x], [y], [offset[0]], [offset[1]])[0]

    def render_many(self, x: Any, y: Any, dx: Any = 0.0, dy: Any = 0.0) -> np.ndarray:
        """The exact model at many positions, ``(n, size, size)``, each centred ``(dx, dy)``
        pixels from its central pixel's centre (drawn together in Fourier space by
        :func:`stages.characterize.psf_kspace.draw_kernels`, as GalSim would draw :meth:`profile`)."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        optical = self.optical.params(x, y) if self.optical is not None else None
        atmosphere = self.atmosphere.params(x, y)
        return draw_kernels(self.atmosphere.beta, atmosphere, optical, self.kernel_size, dx, dy)

    def enclosed_fraction(self, x: float, y: float, radius: float) -> float:
        """Fraction of the model's total flux within ``radius`` pixels of its centre at
        ``(x, y)``: the unit-flux profile drawn with the pixel response (not renormalized, so
        that the wing beyond the aperture counts), summed over the exact aperture."""
        import sep

        n = 2 * math.ceil(radius) + 5
        image = self.profile(x, y).drawImage(nx=n, ny=n, scale=1.0, method="auto")
        array = np.ascontiguousarray(image.array, dtype=np.float64)
        centre = (n - 1) / 2.0
        flux, _, _ = sep.sum_circle(array, [centre], [centre], float(radius), subpix=0)
        return float(flux[0])

    def _cache_nodes(self, keys: set[tuple[int, int]]) -> None:
        """Draw the node kernels of ``keys`` that are not cached yet, a whole row of nodes at a
        time: kernels drawn together may differ from kernels drawn alone in the last bit (the
        FFT and numpy's vector loops work in blocks), so the cache always draws the same
        batches and gives the same kernels however it is filled."""
        for j in sorted({j for i, j in keys if (i, j) not in self._node_kernels}):
            i = np.arange(self._x_nodes.size)
            kernels = self.render_many(self._x_nodes[i], np.full(i.size, self._y_nodes[j]))
            self._node_kernels.update(((a, j), k) for a, k in zip(i.tolist(), kernels, strict=True))

    def kernel_images(self, x: Any, y: Any) -> np.ndarray:
        """Kernels at many positions, ``(n, size, size)``, interpolated between cached nodes.

        Catmull-Rom (cubic) interpolation over the 4 x 4 nearest nodes (the node grid extends
        one step beyond the detector; farther positions take the nearest border value): exact at the nodes and with errors of fourth order in the node step, so that
        it neither broadens nor narrows the PSF where its size changes along the detector.
        """
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        nx, ny = self._x_nodes.size, self._y_nodes.size
        fx = np.clip(np.interp(x, self._x_nodes, np.arange(nx)), 1, nx - 2)
        fy = np.clip(np.interp(y, self._y_nodes, np.arange(ny)), 1, ny - 2)
        i1 = np.minimum(fx.astype(int), nx - 3)
        j1 = np.minimum(fy.astype(int), ny - 3)
        wx, wy = _catmull_rom(fx - i1), _catmull_rom(fy - j1)
        out = np.zeros((x.size, self.kernel_size, self.kernel_size))
        corners = [
            (np.clip(i1 + a - 1, 0, nx - 1), np.clip(j1 + b - 1, 0, ny - 1), wx[a] * wy[b])
            for a in range(4)
            for b in range(4)
        ]
        self._cache_nodes(
            {key for ii, jj, _ in corners for key in zip(ii.tolist(), jj.tolist(), strict=True)}
        )
        for ii, jj, weight in corners:
            for i, j in set(zip(ii.tolist(), jj.tolist(), strict=True)):
                sel = (ii == i) & (jj == j)
                out[sel] += weight[sel, None, None] * self._node_kernels[(i, j)]
        return out / out.sum(axis=(1, 2), keepdims=True)

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        return self.kernel_images(x, y)[0]

    # ----------------------------------------------------------------------------------- FITS
    def to_hdus(self) -> list[fits.ImageHDU]:
        atm = self.atmosphere
        hdu = fits.ImageHDU(np.array(atm.coeffs), name="PSF")
        header = hdu.header
        header["PSFTYPE"] = (
            self.type_name,
            "optical x Moffat atmosphere (stages.characterize.psf_model)",
        )
        header["PSFMOD"] = (type(self).__module__, "Python module defining this PSF type")
        header.append(exact_float_card("PSFBETA", atm.beta, "Moffat index of the atmosphere"))
        header["PSFDEG"] = (atm.degree, "degree of the atmospheric polynomials")
        header["PSFWIDTH"] = (atm.width, "[pixel] detector width")
        header["PSFHEIGH"] = (atm.height, "[pixel] detector height")
        header["PSFSIZE"] = (self.kernel_size, "[pixel] kernel size")
        header.append(exact_float_card("PSFGRID", self.grid_spacing, "[pixel] cache node step"))
        header["PSFOPTIC"] = (self.optical is not None, "has an optical part (PSF_OPTICAL)")
        header["COMMENT"] = "rows: fwhm [pixel], e1, e2 polynomial coefficients"
        hdus = [hdu]
        if self.optical is not None:
            optical = fits.ImageHDU(np.array(self.optical.values), name="PSF_OPTICAL")
            optical.header["COMMENT"] = "planes: optical fwhm [pixel], e1, e2 at the grid nodes"
            hdus.append(optical)
        return hdus

    @classmethod
    def _from_hdus(cls, hdus: Sequence[Any]) -> OpticalAtmospherePsf:
        header = hdus[0].header
        width, height = int(header["PSFWIDTH"]), int(header["PSFHEIGH"])
        if hdus[0].data is None:
            raise CorruptDatasetError("PSF: OPTATM PSF HDU has no coefficients")
        atmosphere = MoffatField(
            float(header["PSFBETA"]), np.asarray(hdus[0].data, np.float64), width, height
        )
        if atmosphere.degree != int(header["PSFDEG"]):
            raise CorruptDatasetError("PSF: OPTATM coefficients do not match PSFDEG")
        optical = None
        if header["PSFOPTIC"]:
            named = [h for h in hdus[1:] if h.name == "PSF_OPTICAL"]
            if not named or named[0].data is None:
                raise CorruptDatasetError("PSF: OPTATM model lacks its PSF_OPTICAL HDU")
            optical = OpticalField(np.asarray(named[0].data, np.float64), width, height)
        return cls(atmosphere, optical, int(header["PSFSIZE"]), float(header["PSFGRID"]))
