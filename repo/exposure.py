"""The Exposure: a calibrated image with its mask, variance, WCS, PSF and photometric calibration.

This is the in-memory form of a single-detector image product (``calexp``, warps, co-adds): three
pixel planes of the same shape, the mapping from pixels to the sky (an astropy ``WCS``), a PSF
model (:mod:`repo.psf`), the conversion from image units to nanojansky (:class:`PhotoCalib`) and
free metadata. The FITS layout is in :mod:`repo.formatters.fits`.

Mask planes follow the LSST ``afw`` conventions: each plane is a bit of an ``int32`` mask, named
in upper case (``SAT``, ``CR``, ``NO_DATA`` ...), and :data:`DEFAULT_MASK_PLANES` fixes the bits
that every exposure starts with.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from astropy.wcs import WCS

if TYPE_CHECKING:
    from .psf import Psf

#: AB magnitude of 1 nJy: 2.5 log10(3631e9) = 31.4 (the LSST convention, exact by definition).
NANOJANSKY_AB_ZERO_POINT = 31.4

#: Mask plane name -> bit index, as in LSST ``afw`` (value of the plane = ``1 << bit``).
DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "STREAK": 9,
    "CROSSTALK": 10,
    "UNMASKEDNAN": 11,
    "CLIPPED": 12,
    "REJECTED": 13,
    "SENSOR_EDGE": 14,
    "INEXACT_PSF": 15,
}

#: One-line meaning of each default mask plane (written into the FITS mask header).
MASK_PLANE_DOCS: dict[str, str] = {
    "BAD": "bad pixel of the detector (bad column, hot or dead pixel)",
    "SAT": "saturated pixel, or bleed trail from a saturated one",
    "INTRP": "pixel value was interpolated from its neighbours",
    "CR": "cosmic ray hit",
    "EDGE": "too close to the image edge for detection or measurement",
    "DETECTED": "part of the footprint of a detected source (positive)",
    "DETECTED_NEGATIVE": "part of the footprint of a negative detection",
    "SUSPECT": "value is of doubtful quality (e.g. near saturation, unknown flag)",
    "NO_DATA": "no usable data here (zero weight, off the detector, not covered)",
    "STREAK": "satellite or meteor streak",
    "CROSSTALK": "crosstalk from another amplifier was corrected here",
    "UNMASKEDNAN": "NaN pixel that no other plane explains",
    "CLIPPED": "co-add: an input was clipped here as an outlier",
    "REJECTED": "co-add: an input was rejected here because of its mask",
    "SENSOR_EDGE": "co-add: an input's sensor edge falls here",
    "INEXACT_PSF": "co-add: the PSF here is not exact (inputs changed within its footprint)",
}

_PLANE_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")
#: Highest usable bit of an int32 mask (bit 31 is the sign bit).
MAX_MASK_BIT = 30

MetadataValue = bool | int | float | str


@dataclass
class PhotoCalib:
    """Conversion from image units (instFlux) to nanojansky.

    Parameters
    ----------
    calibration_mean : float
        Flux in nJy of one image unit (``flux_nJy = instFlux * calibration_mean``), the LSST
        ``PhotoCalib`` convention.
    calibration_err : float
        One-sigma uncertainty of ``calibration_mean`` (nJy per image unit).
    """

    calibration_mean: float
    calibration_err: float = 0.0

    def __post_init__(self) -> None:
        mean, err = float(self.calibration_mean), float(self.calibration_err)
        if not (math.isfinite(mean) and mean > 0):
            raise ValueError(f"PhotoCalib: calibration_mean must be finite and > 0, got {mean}")
        if not (math.isfinite(err) and err >= 0):
            raise ValueError(f"PhotoCalib: calibration_err must be finite and >= 0, got {err}")
        self.calibration_mean, self.calibration_err = mean, err

    @property
    def zero_point(self) -> float:
        """AB magnitude of one image unit: ``31.4 - 2.5 log10(calibration_mean)``.

        With it, ``mag = zero_point - 2.5 log10(instFlux)``.
        """
        return NANOJANSKY_AB_ZERO_POINT - 2.5 * math.log10(self.calibration_mean)

    @classmethod
    def from_zero_point(cls, zero_point: float, zero_point_err: float = 0.0) -> PhotoCalib:
        """Build from the AB magnitude of one image unit (and its uncertainty in mag)."""
        mean = 10.0 ** (-0.4 * (zero_point - NANOJANSKY_AB_ZERO_POINT))
        return cls(mean, mean * 0.4 * math.log(10.0) * zero_point_err)

    def instflux_to_nanojansky(
        self, flux: np.ndarray | float, flux_err: np.ndarray | float | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Convert instrumental fluxes (image units) to nJy.

        Parameters
        ----------
        flux : array_like
            Instrumental fluxes.
        flux_err : array_like, optional
            Their one-sigma uncertainties.

        Returns
        -------
        numpy.ndarray or tuple of numpy.ndarray
            The fluxes in nJy; when ``flux_err`` is given, ``(flux_nJy, flux_nJy_err)`` where the
            error adds the calibration uncertainty in quadrature, as LSST does.
        """
        flux = np.asarray(flux, dtype=np.float64)
        nanojansky = flux * self.calibration_mean
        if flux_err is None:
            return nanojansky
        flux_err = np.asarray(flux_err, dtype=np.float64)
        err = np.hypot(flux_err * self.calibration_mean, flux * self.calibration_err)
        return nanojansky, err


def _default_mask_planes() -> dict[str, int]:
    return dict(DEFAULT_MASK_PLANES)


def _default_mask_plane_docs() -> dict[str, str]:
    return dict(MASK_PLANE_DOCS)


@dataclass(eq=False)
class Exposure:
    """Image, mask and variance planes with WCS, PSF, photometric calibration and metadata.

    Pixel ``(x, y)`` is ``image[y, x]``; positions are zero-based, as for astropy's
    ``WCS.pixel_to_world``.

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``float32`` or ``float64`` pixel values (image units; see ``photo_calib``).
    mask : numpy.ndarray
        ``int32`` bit mask of the same shape; bit ``mask_planes[name]`` set means the pixel is in
        plane ``name``.
    variance : numpy.ndarray
        ``float32`` or ``float64`` variance of ``image`` (image units squared), same shape.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the pixel grid (2 axes).
    psf : repo.psf.Psf, optional
        PSF model, in this exposure's pixel coordinates.
    photo_calib : PhotoCalib, optional
        Conversion from image units to nJy.
    mask_planes : dict of str to int
        Plane name -> bit index; a copy of :data:`DEFAULT_MASK_PLANES` by default.
    mask_plane_docs : dict of str to str
        Plane name -> one-line meaning; every plane has one.
    metadata : dict
        Free metadata (``bool``, ``int``, ``float`` or ``str`` values), kept in insertion order.
    """

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    wcs: WCS | None = None
    psf: Psf | None = None
    photo_calib: PhotoCalib | None = None
    mask_planes: dict[str, int] = field(default_factory=_default_mask_planes)
    mask_plane_docs: dict[str, str] = field(default_factory=_default_mask_plane_docs)
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_plane_array("image", self.image, floating=True)
        _check_plane_array("variance", self.variance, floating=True)
        _check_plane_array("mask", self.mask, floating=False)
        if not (self.image.shape == self.mask.shape == self.variance.shape):
            raise ValueError(
                f"Exposure: image {self.image.shape}, mask {self.mask.shape} and variance "
                f"{self.variance.shape} must have the same shape"
            )
        if self.wcs is not None and not isinstance(self.wcs, WCS):
            raise TypeError(f"Exposure: wcs must be an astropy WCS, got {type(self.wcs).__name__}")
        if self.wcs is not None and self.wcs.naxis != 2:
            raise ValueError(f"Exposure: wcs must have 2 axes, got {self.wcs.naxis}")
        if self.photo_calib is not None and not isinstance(self.photo_calib, PhotoCalib):
            raise TypeError(
                f"Exposure: photo_calib must be a PhotoCalib, got {type(self.photo_calib).__name__}"
            )
        self._check_psf()
        check_mask_planes(self.mask_planes, self.mask_plane_docs)
        check_metadata(self.metadata)

    def _check_psf(self) -> None:
        if self.psf is None:
            return
        from .psf import Psf

        if not isinstance(self.psf, Psf):
            raise TypeError(f"Exposure: psf must be a repo.psf.Psf, got {type(self.psf).__name__}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``, the shape of the pixel planes."""
        return self.image.shape  # type: ignore[return-value]

    def bit(self, name: str) -> int:
        """The mask value of plane ``name`` (``1 << index``); several names may be OR-ed."""
        try:
            return 1 << self.mask_planes[name]
        except KeyError:
            known = ", ".join(self.mask_planes)
            raise KeyError(f"unknown mask plane {name!r}; known planes: {known}") from None

    def bits(self, *names: str) -> int:
        """The OR of the mask values of several planes."""
        value = 0
        for name in names:
            value |= self.bit(name)
        return value

    def add_mask_plane(self, name: str, doc: str) -> int:
        """Add plane ``name`` on the lowest free bit and return its mask value (``1 << index``).

        An existing plane of that name is kept (and its doc is not changed).
        """
        if name in self.mask_planes:
            return self.bit(name)
        used = set(self.mask_planes.values())
        free = [b for b in range(MAX_MASK_BIT + 1) if b not in used]
        if not free:
            raise ValueError(f"cannot add mask plane {name!r}: all {MAX_MASK_BIT + 1} bits used")
        planes = {**self.mask_planes, name: free[0]}
        docs = {**self.mask_plane_docs, name: doc}
        check_mask_planes(planes, docs)
        self.mask_planes, self.mask_plane_docs = planes, docs
        return 1 << free[0]


def _check_plane_array(name: str, array: object, *, floating: bool) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"Exposure: {name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != 2:
        raise ValueError(f"Exposure: {name} must be 2-D, got {array.ndim}-D")
    kind = array.dtype.newbyteorder("=")  # either byte order; the FITS reader gives native
    if floating and kind not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"Exposure: {name} must be float32 or float64, got {kind}")
    if not floating and kind != np.dtype(np.int32):
        raise ValueError(f"Exposure: {name} must be int32, got {kind}")


def check_mask_planes(planes: dict[str, int], docs: dict[str, str]) -> None:
    """Validate a plane -> bit mapping and its docs (names, bit range, uniqueness, ASCII docs)."""
    seen: dict[int, str] = {}
    for name, bit in planes.items():
        if not isinstance(name, str) or not _PLANE_NAME.fullmatch(name):
            raise ValueError(
                f"mask plane name {name!r} is invalid: use upper-case letters, digits and '_', "
                "starting with a letter, at most 40 characters"
            )
        if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= MAX_MASK_BIT:
            raise ValueError(f"mask plane {name}: bit must be an int in [0, {MAX_MASK_BIT}]")
        if bit in seen:
            raise ValueError(f"mask planes {seen[bit]} and {name} both use bit {bit}")
        seen[bit] = name
    if set(docs) != set(planes):
        missing = sorted(set(planes) - set(docs))
        extra = sorted(set(docs) - set(planes))
        raise ValueError(
            f"mask plane docs do not match the planes (missing: {missing}, extra: {extra})"
        )
    for name, doc in docs.items():
        if not isinstance(doc, str) or not doc.isascii() or not doc.isprintable():
            raise ValueError(f"mask plane {name}: doc must be a printable ASCII string")
        if doc != doc.rstrip(" "):
            raise ValueError(f"mask plane {name}: doc must not end with spaces (FITS drops them)")


def check_metadata(metadata: dict[str, MetadataValue]) -> None:
    """Check that metadata is a dict of str keys to bool, int, float or str values."""
    if not isinstance(metadata, dict):
        raise TypeError(f"Exposure: metadata must be a dict, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"Exposure metadata: key {key!r} is not a string")
        if type(value) not in (bool, int, float, str):
            raise TypeError(
                f"Exposure metadata {key!r}: value must be bool, int, float or str, got "
                f"{type(value).__name__} (convert numpy scalars with .item())"
            )
