"""Point-spread-function models and their FITS form.

A :class:`Psf` gives the PSF image at a position of an exposure (``kernel_image``: odd size,
centred on the central pixel, summing to 1) and its Gaussian-equivalent width (``sigma``, from
adaptive second moments, as LSST's ``computeShape().getDeterminantRadius()``). Three models:

``GaussianPsf``
    A circular Gaussian, the same everywhere.
``ImagePsf``
    One pixelized kernel, the same everywhere.
``PsfexPsf``
    A PSFEx model: polynomial basis images in the pixel position, read from a PSFEx file (the
    classic ``PSF_DATA`` extension, or a legacypipe "merged" table with one row per CCD).

Each model serializes itself to FITS HDUs (``to_hdus``): the first has ``EXTNAME = 'PSF'`` and a
``PSFTYPE`` card naming the model; :meth:`Psf.from_hdus` dispatches on ``PSFTYPE`` through a
registry that subclasses join by setting ``type_name``. Malformed PSF HDUs raise
:class:`repo.errors.CorruptDatasetError`.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import fsspec
import numpy as np
from astropy.io import fits
from scipy import ndimage

from .errors import CorruptDatasetError, StorageError
from .formatters.fits import exact_float_card

_PSF_TYPES: dict[str, type[Psf]] = {}

#: FWHM / sigma of a Gaussian.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class Psf(ABC):
    """Base class of PSF models; subclasses set ``type_name`` to join the FITS registry."""

    type_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = getattr(cls, "type_name", None)
        if name:
            _PSF_TYPES[name] = cls

    @abstractmethod
    def kernel_image(self, x: float, y: float) -> np.ndarray:
        """The PSF at pixel ``(x, y)`` as a ``float64`` image.

        Odd size in both axes, centred on the central pixel, normalized to sum 1. ``x, y`` are
        zero-based pixel coordinates of the exposure; position-independent models ignore them.
        """

    def sigma(self, x: float, y: float) -> float:
        """Gaussian-equivalent sigma (pixels) at ``(x, y)`` from adaptive second moments.

        The determinant radius ``det(M)**0.25`` of the Gaussian-weighted moment matrix ``M`` of
        the kernel image, iterated until the weight matches the PSF (exact for a Gaussian,
        insensitive to the wings of real PSFs).
        """
        return adaptive_sigma(self.kernel_image(x, y))

    def fwhm(self, x: float, y: float) -> float:
        """Gaussian-equivalent FWHM (pixels) at ``(x, y)``: ``2.3548 * sigma``."""
        return FWHM_PER_SIGMA * self.sigma(x, y)

    def enclosed_fraction(self, x: float, y: float, radius: float) -> float:
        """Fraction of the PSF's flux within ``radius`` pixels of its centre at ``(x, y)``.

        Exact overlap of the circle with the pixels (as the circular apertures of
        :mod:`stages.measure.measurement`). This version sums the unit-sum kernel image, so it cannot
        see flux beyond the kernel's edge; models that know their wings override it.
        """
        import sep

        kernel = np.ascontiguousarray(self.kernel_image(x, y), dtype=np.float64)
        cy, cx = (np.array(kernel.shape) - 1) / 2.0
        flux, _, _ = sep.sum_circle(kernel, [cx], [cy], float(radius), subpix=0)
        return float(flux[0])

    @abstractmethod
    def to_hdus(self) -> list[fits.ImageHDU | fits.BinTableHDU]:
        """FITS HDUs describing this model; the first is named ``PSF`` with a ``PSFTYPE`` card."""

    @classmethod
    @abstractmethod
    def _from_hdus(cls, hdus: Sequence[Any]) -> Psf:
        """Rebuild the model from the HDUs written by ``to_hdus``."""

    @staticmethod
    def from_hdus(hdus: Sequence[Any]) -> Psf:
        """Rebuild a PSF from HDUs written by :meth:`to_hdus`, dispatching on ``PSFTYPE``.

        Raises
        ------
        repo.errors.CorruptDatasetError
            No HDUs, no ``PSFTYPE``, an unknown type, or malformed content.
        """
        if not hdus:
            raise CorruptDatasetError("PSF: no PSF HDU")
        type_name = hdus[0].header.get("PSFTYPE")
        if type_name not in _PSF_TYPES:
            _import_provider(hdus[0].header.get("PSFMOD"))
        if type_name not in _PSF_TYPES:
            known = ", ".join(sorted(_PSF_TYPES))
            raise CorruptDatasetError(f"PSF: unknown PSFTYPE {type_name!r} (known: {known})")
        try:
            return _PSF_TYPES[type_name]._from_hdus(hdus)
        except CorruptDatasetError:
            raise
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CorruptDatasetError(f"PSF: malformed {type_name} HDUs ({exc})") from exc


#: Packages whose modules may define PSF types named by a file's ``PSFMOD`` card.
PSF_PROVIDER_PACKAGES = ("repo.", "stages.")


def _import_provider(module: Any) -> None:
    """Import the module a PSF HDU names as defining its type (only drp's own packages).

    PSF models fitted by pipeline stages live outside :mod:`repo` (which must not import
    :mod:`stages`); their HDUs name their module, so that reading a calexp works in any process.
    """
    if not isinstance(module, str) or not module.startswith(PSF_PROVIDER_PACKAGES):
        return
    if not all(part.isidentifier() for part in module.split(".")):
        return
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return


def registered_psf_types() -> dict[str, type[Psf]]:
    """PSF model classes by their ``PSFTYPE`` name."""
    return dict(_PSF_TYPES)


def adaptive_sigma(kernel: np.ndarray, max_iter: int = 100, tol: float = 1e-9) -> float:
    """Gaussian-equivalent sigma of a centred kernel image from adaptive second moments.

    Iterates an elliptical Gaussian weight of covariance ``C`` until ``C`` equals twice the
    weighted covariance of ``kernel * weight`` (the fixed point at which a Gaussian PSF of
    covariance ``C`` is weighted by itself); returns ``det(C)**0.25``. Starts from, and falls
    back to, the unweighted moments if the weight degenerates.
    """
    ny, nx = kernel.shape
    yy, xx = np.mgrid[:ny, :nx]
    xx = xx - (nx - 1) / 2.0
    yy = yy - (ny - 1) / 2.0
    unweighted = _covariance(kernel, xx, yy)
    cov = unweighted
    for _ in range(max_iter):
        if not np.linalg.det(cov) > 0:
            cov = unweighted
            break
        inv = np.linalg.inv(cov)
        quad = inv[0, 0] * xx * xx + 2.0 * inv[0, 1] * xx * yy + inv[1, 1] * yy * yy
        new = 2.0 * _covariance(kernel * np.exp(-0.5 * quad), xx, yy)
        converged = np.abs(new - cov).max() <= tol * np.abs(cov).max()
        cov = new
        if converged:
            break
    det = np.linalg.det(cov)
    if not det > 0:
        raise ValueError("PSF kernel has no positive second moments")
    return float(det**0.25)


def _covariance(weights: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """The 2x2 second-moment matrix of ``weights`` about the grid centre."""
    total = weights.sum()
    if not total > 0:
        return np.zeros((2, 2))
    xy = (weights * xx * yy).sum()
    return np.array([[(weights * xx * xx).sum(), xy], [xy, (weights * yy * yy).sum()]]) / total


def _normalized(kernel: np.ndarray) -> np.ndarray:
    total = kernel.sum()
    if not (np.isfinite(total) and total > 0):
        raise ValueError(f"PSF kernel must have a finite positive sum, got {total}")
    return kernel / total


def _odd_centred(image: np.ndarray) -> np.ndarray:
    """Crop an even-sized axis to odd size keeping pixel ``n // 2`` at the centre (PSFEx rule)."""
    ny, nx = image.shape[-2:]
    return image[..., int(ny % 2 == 0) :, int(nx % 2 == 0) :]


class GaussianPsf(Psf):
    """A circular Gaussian of standard deviation ``sigma`` pixels on a ``size`` x ``size`` grid.

    The kernel is the Gaussian sampled at pixel centres and normalized to sum 1.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels (> 0).
    size : int
        Odd kernel size in pixels; by default the smallest odd size covering +-5 sigma.
    """

    type_name = "GAUSSIAN"

    def __init__(self, sigma: float, size: int | None = None) -> None:
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"GaussianPsf: sigma must be finite and > 0, got {sigma}")
        if size is None:
            size = 2 * math.ceil(5 * sigma) + 1
        if isinstance(size, bool) or int(size) != size or size < 1 or size % 2 == 0:
            raise ValueError(f"GaussianPsf: size must be a positive odd integer, got {size}")
        self._sigma = sigma
        self.size = int(size)

    @property
    def gaussian_sigma(self) -> float:
        """The ``sigma`` parameter of the Gaussian (pixels)."""
        return self._sigma

    def __repr__(self) -> str:
        return f"GaussianPsf(sigma={self._sigma!r}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GaussianPsf):
            return NotImplemented
        return self._sigma == other._sigma and self.size == other.size

    __hash__ = None  # type: ignore[assignment]

    def kernel_image(self, x: float = 0.0, y: float = 0.0) -> np.ndarray:
        half = self.size // 2
        r = np.arange(-half, half + 1, dtype=np.float64)
        profile = np.exp(-0.5 * (r / self._sigma) ** 2)
        return _normalized(np.outer(profile, profile))

    def to_hdus(self) -> list[fits.ImageHDU]:
        hdu = fits.ImageHDU(self.kernel_image(), name="PSF")
        hdu.header["PSFTYPE"] = (self.type_name, "PSF model (repo.psf)")
        hdu.header.append(exact_float_card("PSFSIGMA", self._sigma, "[pixel] Gaussian sigma"))
        hdu.header["PSFSIZE"] = (self.size, "[pixel] kernel size")
        return [hdu]

    @classmethod
    def _from_hdus(cls, hdus: Sequence[Any]) -> GaussianPsf:
        header = hdus[0].header
        return cls(_header_float(header, "PSFSIGMA"), int(header["PSFSIZE"]))


class ImagePsf(Psf):
    """One pixelized PSF kernel, the same everywhere.

    Parameters
    ----------
    kernel : numpy.ndarray
        2-D kernel of odd size, centred on its central pixel; stored as ``float64`` and normalized
        to sum 1.
    """

    type_name = "IMAGE"

    def __init__(self, kernel: np.ndarray) -> None:
        kernel = np.asarray(kernel, dtype=np.float64)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"ImagePsf: kernel must be 2-D of odd size, got {kernel.shape}")
        self.kernel = _normalized(kernel)
        self.kernel.flags.writeable = False

    def __repr__(self) -> str:
        return f"ImagePsf(kernel of shape {self.kernel.shape})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImagePsf):
            return NotImplemented
        return self.kernel.shape == other.kernel.shape and np.array_equal(self.kernel, other.kernel)

    __hash__ = None  # type: ignore[assignment]

    def kernel_image(self, x: float = 0.0, y: float = 0.0) -> np.ndarray:
        return self.kernel.copy()

    def to_hdus(self) -> list[fits.ImageHDU]:
        hdu = fits.ImageHDU(self.kernel, name="PSF")
        hdu.header["PSFTYPE"] = (self.type_name, "PSF model (repo.psf)")
        return [hdu]

    @classmethod
    def _from_hdus(cls, hdus: Sequence[Any]) -> ImagePsf:
        data = hdus[0].data
        if data is None:
            raise CorruptDatasetError("PSF: IMAGE PSF HDU has no data")
        psf = cls.__new__(cls)
        kernel = np.asarray(data, dtype=np.float64)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise CorruptDatasetError(f"PSF: IMAGE kernel must be 2-D of odd size: {kernel.shape}")
        # Stored already normalized: keep the values bit for bit.
        psf.kernel = kernel.copy()
        psf.kernel.flags.writeable = False
        return psf


class PsfexPsf(Psf):
    """A PSFEx model: basis images combined by a polynomial in the pixel position.

    The PSF at zero-based pixel ``(x, y)`` is ``sum_k c_k(x, y) * basis[k]`` with the PSFEx
    terms ``c_k = dx**i * dy**j`` ordered ``1, dx, dx**2, ..., dy, dx*dy, ..., dy**2 ...`` (x
    powers vary fastest) and ``dx = (x + 1 - polzero[0]) / polscal[0]``; the ``+ 1`` is because
    PSFEx positions (``X_IMAGE``, ``Y_IMAGE``) are one-based. The basis is sampled every
    ``psf_samp`` image pixels; when that is not 1 the model is resampled onto the pixel grid with
    a cubic spline. Even-sized bases are cropped to odd size keeping pixel ``n // 2`` (the PSFEx
    centre) at the centre.

    Parameters
    ----------
    basis : numpy.ndarray
        ``(nterms, ny, nx)`` basis images (stored as float32, as in PSFEx files).
    polzero, polscal : tuple of float
        Polynomial offsets and scales of (x, y), PSFEx ``POLZERO1/2`` and ``POLSCAL1/2``.
    poldeg : int
        Polynomial degree (0 for a constant PSF).
    psf_samp : float
        Basis pixel size in image pixels (PSFEx ``PSF_SAMP``).
    psf_fwhm : float, optional
        PSFEx's own FWHM estimate (pixels), kept for reference.
    """

    type_name = "PSFEX"

    def __init__(
        self,
        basis: np.ndarray,
        polzero: tuple[float, float],
        polscal: tuple[float, float],
        poldeg: int,
        psf_samp: float = 1.0,
        psf_fwhm: float | None = None,
    ) -> None:
        basis = np.array(basis, dtype=np.float32)  # PSFEx's type; native byte order
        if basis.ndim == 2:
            basis = basis[np.newaxis]
        nterms = (poldeg + 1) * (poldeg + 2) // 2
        if basis.ndim != 3 or basis.shape[0] != nterms:
            raise ValueError(
                f"PsfexPsf: basis of shape {basis.shape} does not hold the {nterms} terms of a "
                f"degree-{poldeg} polynomial"
            )
        if not (psf_samp > 0 and math.isfinite(psf_samp)):
            raise ValueError(f"PsfexPsf: psf_samp must be finite and > 0, got {psf_samp}")
        if any(not (s != 0 and math.isfinite(s)) for s in polscal):
            raise ValueError(f"PsfexPsf: polscal must be finite and non-zero, got {polscal}")
        self.basis = basis
        self.basis.flags.writeable = False
        self.polzero = (float(polzero[0]), float(polzero[1]))
        self.polscal = (float(polscal[0]), float(polscal[1]))
        self.poldeg = int(poldeg)
        self.psf_samp = float(psf_samp)
        self.psf_fwhm = None if psf_fwhm is None else float(psf_fwhm)

    def __repr__(self) -> str:
        return (
            f"PsfexPsf(basis {self.basis.shape}, poldeg={self.poldeg}, polzero={self.polzero}, "
            f"polscal={self.polscal}, psf_samp={self.psf_samp})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PsfexPsf):
            return NotImplemented
        return (
            self.basis.dtype == other.basis.dtype
            and self.basis.shape == other.basis.shape
            and np.array_equal(self.basis, other.basis)
            and (self.polzero, self.polscal, self.poldeg, self.psf_samp, self.psf_fwhm)
            == (other.polzero, other.polscal, other.poldeg, other.psf_samp, other.psf_fwhm)
        )

    __hash__ = None  # type: ignore[assignment]

    def polynomial_terms(self, x: float, y: float) -> np.ndarray:
        """The PSFEx polynomial terms at zero-based pixel ``(x, y)``."""
        dx = (x + 1.0 - self.polzero[0]) / self.polscal[0]
        dy = (y + 1.0 - self.polzero[1]) / self.polscal[1]
        return np.array(
            [dx**i * dy**j for j in range(self.poldeg + 1) for i in range(self.poldeg + 1 - j)]
        )

    def model_image(self, x: float, y: float) -> np.ndarray:
        """The PSF at ``(x, y)`` on the basis grid (``psf_samp`` pixels), not normalized."""
        terms = self.polynomial_terms(x, y)
        return np.tensordot(terms, self.basis.astype(np.float64), axes=1)

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        model = _odd_centred(self.model_image(x, y))
        if self.psf_samp != 1.0:
            model = _resample_to_pixels(model, self.psf_samp)
        return _normalized(model)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], ccdname: str | None = None, expnum: int | None = None
    ) -> PsfexPsf:
        """Read a PSFEx file (local path or fsspec URL).

        Parameters
        ----------
        path : str or path-like
            A classic PSFEx ``.psf`` file (``PSF_DATA`` extension) or a legacypipe merged file
            (one table row per CCD with ``expnum`` and ``ccdname`` columns).
        ccdname : str, optional
            The CCD to select (e.g. ``'S4'``); required when a merged file has several rows and
            checked against the row otherwise.
        expnum : int, optional
            The exposure number, checked against the file's ``expnum`` column when it has one.

        Raises
        ------
        repo.errors.StorageError
            The file does not exist.
        repo.errors.CorruptDatasetError
            The file is not a PSFEx model, or holds no row for the requested CCD/exposure.
        """
        source = os.fspath(path)
        try:
            with fsspec.open(source, "rb") as handle, fits.open(handle, memmap=False) as hdul:
                hdul.readall()
                return cls.from_hdulist(hdul, ccdname=ccdname, expnum=expnum, source=source)
        except CorruptDatasetError:
            raise
        except FileNotFoundError:
            raise StorageError(f"{source}: no such PSFEx file") from None
        except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise CorruptDatasetError(f"{source}: cannot read PSFEx model ({exc})") from exc

    @classmethod
    def from_hdulist(
        cls,
        hdul: fits.HDUList,
        ccdname: str | None = None,
        expnum: int | None = None,
        source: str = "PSFEx file",
    ) -> PsfexPsf:
        """Build from an open PSFEx HDUList; see :meth:`from_file` for the arguments."""
        tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
        named = [h for h in tables if h.name in ("PSF_DATA", "PSF")]
        if not (named or tables):
            raise CorruptDatasetError(f"{source}: no PSFEx table (PSF_DATA) found")
        table = (named or tables)[0]
        columns = {name.lower(): name for name in table.columns.names}
        if "psf_mask" not in columns:
            raise CorruptDatasetError(f"{source}: the PSFEx table has no PSF_MASK column")
        row = _select_psfex_row(table, columns, ccdname, expnum, source)

        def param(name: str) -> Any:
            if name.lower() in columns:
                value = table.data[columns[name.lower()]][row]
                return value.item() if hasattr(value, "item") else value
            if name.upper() in table.header:
                return table.header[name.upper()]
            raise CorruptDatasetError(f"{source}: PSFEx keyword {name} not found")

        naxis = int(param("POLNAXIS"))
        if naxis == 0:
            polzero, polscal, poldeg = (0.0, 0.0), (1.0, 1.0), 0
        elif naxis == 2:
            names = (str(param("POLNAME1")).strip(), str(param("POLNAME2")).strip())
            if names != ("X_IMAGE", "Y_IMAGE"):
                raise CorruptDatasetError(
                    f"{source}: PSFEx polynomial in {names}; only (X_IMAGE, Y_IMAGE) is supported"
                )
            if int(param("POLNGRP")) != 1:
                raise CorruptDatasetError(f"{source}: PSFEx models with several groups unsupported")
            polzero = (float(param("POLZERO1")), float(param("POLZERO2")))
            polscal = (float(param("POLSCAL1")), float(param("POLSCAL2")))
            poldeg = int(param("POLDEG1"))
        else:
            raise CorruptDatasetError(f"{source}: PSFEx POLNAXIS={naxis}; expected 0 or 2")
        basis = np.asarray(table.data[columns["psf_mask"]][row])
        try:
            fwhm = float(param("PSF_FWHM"))
        except CorruptDatasetError:
            fwhm = None
        try:
            return cls(basis, polzero, polscal, poldeg, float(param("PSF_SAMP")), fwhm)
        except ValueError as exc:
            raise CorruptDatasetError(f"{source}: {exc}") from exc

    def to_hdus(self) -> list[fits.BinTableHDU]:
        nterms, ny, nx = self.basis.shape
        column = fits.Column(
            name="PSF_MASK",
            format=f"{nterms * ny * nx}E",
            dim=f"({nx},{ny},{nterms})",
            array=self.basis[np.newaxis],
        )
        hdu = fits.BinTableHDU.from_columns([column], name="PSF")
        header = hdu.header
        header["PSFTYPE"] = (self.type_name, "PSF model (repo.psf)")
        header["POLNAXIS"] = 2
        header["POLGRP1"] = 1
        header["POLNAME1"] = "X_IMAGE"
        header.append(exact_float_card("POLZERO1", self.polzero[0]))
        header.append(exact_float_card("POLSCAL1", self.polscal[0]))
        header["POLGRP2"] = 1
        header["POLNAME2"] = "Y_IMAGE"
        header.append(exact_float_card("POLZERO2", self.polzero[1]))
        header.append(exact_float_card("POLSCAL2", self.polscal[1]))
        header["POLNGRP"] = 1
        header["POLDEG1"] = self.poldeg
        header.append(exact_float_card("PSF_SAMP", self.psf_samp, "basis pixel / image pixel"))
        if self.psf_fwhm is not None:
            header.append(exact_float_card("PSF_FWHM", self.psf_fwhm, "[pixel] PSFEx FWHM"))
        header["PSFNAXIS"] = 3
        header["PSFAXIS1"], header["PSFAXIS2"], header["PSFAXIS3"] = nx, ny, nterms
        return [hdu]

    @classmethod
    def _from_hdus(cls, hdus: Sequence[Any]) -> PsfexPsf:
        return cls.from_hdulist(fits.HDUList([fits.PrimaryHDU(), *hdus]), source="PSF HDU")


def _select_psfex_row(
    table: fits.BinTableHDU,
    columns: dict[str, str],
    ccdname: str | None,
    expnum: int | None,
    source: str,
) -> int:
    """Pick the table row of the requested CCD (legacypipe merged files have one per CCD)."""
    nrows = len(table.data)
    if nrows == 0:
        raise CorruptDatasetError(f"{source}: the PSFEx table is empty")
    rows = np.arange(nrows)
    if ccdname is not None and "ccdname" in columns:
        names = np.char.strip(np.asarray(table.data[columns["ccdname"]]).astype(str))
        rows = rows[names[rows] == ccdname.strip()]
    if expnum is not None and "expnum" in columns:
        numbers = np.asarray(table.data[columns["expnum"]])
        rows = rows[numbers[rows] == expnum]
    if len(rows) == 0:
        raise CorruptDatasetError(
            f"{source}: no PSFEx model for ccdname={ccdname!r}, expnum={expnum!r}"
        )
    if len(rows) > 1:
        raise CorruptDatasetError(
            f"{source}: {len(rows)} PSFEx models match ccdname={ccdname!r}, expnum={expnum!r}; "
            "give the CCD name (and exposure number) to select one"
        )
    return int(rows[0])


def _resample_to_pixels(model: np.ndarray, psf_samp: float) -> np.ndarray:
    """Resample a centred model sampled every ``psf_samp`` pixels onto the pixel grid."""
    n = model.shape[0]
    centre = (n - 1) / 2.0
    half = int(math.floor(centre * psf_samp))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    model_coords = centre + offsets / psf_samp
    yy, xx = np.meshgrid(model_coords, model_coords, indexing="ij")
    return ndimage.map_coordinates(model, [yy, xx], order=3, mode="constant", cval=0.0)


def _header_float(header: fits.Header, keyword: str) -> float:
    value = header[keyword]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CorruptDatasetError(f"PSF: {keyword} must be a number, got {value!r}")
    return float(value)
