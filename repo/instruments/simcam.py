"""SimCam: the simulated survey's camera, as an instrument model the pipeline can use.

SimCam is a small mosaic camera: ``n_detectors`` CCDs on a grid in the focal plane, each read out
by ``n_amps`` amplifiers side by side along x, each amplifier with serial overscan columns (to the
right of its data) and parallel overscan rows (above its data). Everything a camera team would
hand to a pipeline is here and is deterministic given :attr:`SimCamConfig.seed`:

* geometry: detector centres (mm), small mounting rotations, pixel size and plate scale, a radial
  camera distortion, and the maps (detector, x, y) <-> focal plane <-> sky for a pointing
  (:meth:`SimCam.pixel_to_sky`, :meth:`SimCam.sky_to_pixel`) and the TAN-SIP WCS that
  represents them (:meth:`SimCam.wcs_header`);
* electronics: per-amplifier gain (e-/ADU), read noise (e-) and bias level (ADU), a fixed bias
  structure (column pattern and a ramp at the start of each amplifier's rows), the
  saturation level and a mild quadratic nonlinearity (:meth:`SimCam.apply_nonlinearity`,
  :meth:`SimCam.linearize`);
* the sensor: dark current with hot pixels and hot columns, dead columns, the flat field
  (pixel response non-uniformity x a smooth QE pattern x the focal-plane illumination, per band)
  and the defect list (:meth:`SimCam.defects`);
* optics: the telescope/camera part of the PSF (:meth:`SimCam.optical_psf`), a Gaussian whose
  size and ellipticity grow with field radius, the stand-in for wavefront sensing and metrology;
* filters ``SimCam-g``, ``SimCam-r`` and ``SimCam-i`` with zero points, extinction coefficients,
  dark-sky brightness and effective wavelengths (:data:`FILTERS`).

Conventions
-----------
Pixel coordinates are 0-based with the centre of the first pixel at (0, 0) (numpy/LSST; FITS is
+1) on the *assembled* detector image of ``nx`` x ``ny`` science pixels. Focal-plane coordinates
``(X, Y)`` are in mm from the optical axis. A pointing is ``(ra, dec, rotation)`` in degrees: the
boresight and the position angle (east of north) of the focal plane's +Y axis on the sky. With
rotation 0 the focal plane +Y points north and +X points west, so an image looks like the sky
(north up, east left). Ellipticities are distortions ``e = (a^2 - b^2) / (a^2 + b^2)`` with
``e1 = e cos 2b``, ``e2 = e sin 2b`` for a major axis at angle ``b`` from the frame's +x axis.

Distortion: a point whose ideal (gnomonic) focal-plane position is ``P`` lands at
``P (1 + k |P|^2)``; ``k`` is chosen so that the displacement at the corner of the focal plane is
``distortion_edge_px`` pixels.

Nonlinearity: a pixel holding ``e`` electrons reads ``e (1 - nonlinearity * e / full_well)``
electrons (times 1/gain in ADU): the signal is low by ``nonlinearity`` (a fraction) at full well.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..dimensions import ELEMENTS
from ..errors import DrpError, InvalidDataIdError
from .base import IngestItem, Instrument

if TYPE_CHECKING:
    import galsim

#: AB magnitude of a flux of 1 nJy.
AB_NJY_ZERO_POINT = 31.4
#: Dataset type of SimCam raw files.
RAW_DATASET_TYPE = "raw"
#: Raw OBSTYPE -> ``observation_type`` of the visit record.
OBSERVATION_TYPES = {"object": "science", "bias": "bias", "dark": "dark", "flat": "flat"}


def dimension_record(element: str, values: dict[str, Any]) -> dict[str, Any]:
    """The values that are fields of a dimension element's records (others are dropped)."""
    columns = set(ELEMENTS[element].record_columns)
    return {k: v for k, v in values.items() if k in columns}


@dataclass(frozen=True)
class Filter:
    """One SimCam filter and its photometric properties.

    ``zero_point`` is the AB magnitude of a source giving 1 electron per second above the
    atmosphere at unit flat-field response; ``extinction`` is in mag per airmass; ``sky_mag`` is
    the dark-sky surface brightness (AB mag per arcsec^2); ``vignetting_scale`` scales the
    camera's vignetting depth for this band; ``psf_scale`` scales the optical PSF size.
    """

    name: str
    band: str
    wavelength_nm: float
    zero_point: float
    extinction: float
    sky_mag: float
    vignetting_scale: float
    psf_scale: float


#: The SimCam filters by band.
FILTERS: dict[str, Filter] = {
    "g": Filter("SimCam-g", "g", 477.0, 28.10, 0.18, 22.1, 1.15, 1.08),
    "r": Filter("SimCam-r", "r", 623.0, 28.25, 0.10, 21.2, 1.00, 1.00),
    "i": Filter("SimCam-i", "i", 762.0, 27.95, 0.07, 20.4, 0.85, 0.95),
}


@dataclass(frozen=True)
class SimCamConfig:
    """The configuration of a SimCam camera (geometry, electronics, sensor and optics).

    The camera is fully determined by this configuration: two SimCam objects with equal
    configurations have identical gains, defects, flats and bias structure.
    """

    n_detectors: int = 4
    nx: int = 1024
    ny: int = 1024
    n_amps: int = 2
    serial_overscan: int = 32
    parallel_overscan: int = 16
    pixel_size_um: float = 10.0
    pixel_scale_arcsec: float = 0.2
    gap_mm: float = 1.0
    detector_rotation_sigma_deg: float = 0.02
    bias_level_adu: float = 1000.0
    gain_mean: float = 1.7
    read_noise_mean: float = 5.0
    full_well: float = 90000.0
    dark_current: float = 0.002
    hot_pixel_fraction: float = 5e-5
    n_bad_columns: int = 2
    prnu: float = 0.01
    vignetting: float = 0.12
    nonlinearity: float = 0.005
    distortion_edge_px: float = 3.0
    optical_fwhm_arcsec: float = 0.35
    optical_fwhm_growth: float = 0.5
    optical_e_edge: float = 0.06
    seed: int = 20240611

    def __post_init__(self) -> None:
        positive_ints = ("n_detectors", "nx", "ny", "n_amps")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise DrpError(f"SimCamConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.nx % self.n_amps:
            raise DrpError(f"SimCamConfig.nx={self.nx} is not divisible by n_amps={self.n_amps}")
        if self.serial_overscan < 1 or self.parallel_overscan < 0:
            raise DrpError("SimCamConfig needs serial_overscan >= 1 and parallel_overscan >= 0")
        for name in ("pixel_size_um", "pixel_scale_arcsec", "gain_mean", "full_well"):
            if not getattr(self, name) > 0:
                raise DrpError(f"SimCamConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.nonlinearity < 0.2:
            raise DrpError(
                f"SimCamConfig.nonlinearity must be in [0, 0.2), got {self.nonlinearity}"
            )

    @property
    def layout(self) -> tuple[int, int]:
        """Detector grid (columns, rows): the most square grid holding ``n_detectors``."""
        cols = math.ceil(math.sqrt(self.n_detectors))
        return cols, math.ceil(self.n_detectors / cols)


@dataclass(frozen=True)
class Amplifier:
    """One amplifier of a detector: its place on the detector, raw layout and electronics.

    The raw amplifier image has ``ny + parallel_overscan`` rows and ``width + serial_overscan``
    columns: the data in ``[0:ny, 0:width]``, the serial overscan in ``[:, width:]`` and the
    parallel overscan in ``[ny:, 0:width]`` (numpy order, rows first). ``x0`` is the first
    detector column the amplifier reads.
    """

    index: int
    name: str
    x0: int
    width: int
    ny: int
    serial_overscan: int
    parallel_overscan: int
    gain: float
    read_noise: float
    bias_level: float
    saturation_adu: int

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Shape (rows, columns) of the raw amplifier image."""
        return self.ny + self.parallel_overscan, self.width + self.serial_overscan

    @property
    def data_slice(self) -> tuple[slice, slice]:
        """numpy slices of the data section in the raw amplifier image."""
        return slice(0, self.ny), slice(0, self.width)

    @property
    def serial_overscan_slice(self) -> tuple[slice, slice]:
        """numpy slices of the serial overscan (data rows only) in the raw amplifier image."""
        return slice(0, self.ny), slice(self.width, self.width + self.serial_overscan)

    @property
    def parallel_overscan_slice(self) -> tuple[slice, slice]:
        """numpy slices of the parallel overscan rows in the raw amplifier image."""
        return slice(self.ny, self.ny + self.parallel_overscan), slice(0, self.width)

    @property
    def detector_slice(self) -> tuple[slice, slice]:
        """numpy slices of the assembled detector image that this amplifier fills."""
        return slice(0, self.ny), slice(self.x0, self.x0 + self.width)

    def sections(self) -> dict[str, str]:
        """FITS sections (1-based, x first): DATASEC, BIASSEC, PBIASSEC, DETSEC."""
        w, ny, so, po = self.width, self.ny, self.serial_overscan, self.parallel_overscan
        out = {
            "DATASEC": f"[1:{w},1:{ny}]",
            "BIASSEC": f"[{w + 1}:{w + so},1:{ny}]",
            "DETSEC": f"[{self.x0 + 1}:{self.x0 + w},1:{ny}]",
        }
        if po:
            out["PBIASSEC"] = f"[1:{w},{ny + 1}:{ny + po}]"
        return out


@dataclass(frozen=True)
class Detector:
    """One SimCam detector: id, name, place on the focal plane and its amplifiers."""

    id: int
    name: str
    nx: int
    ny: int
    focal_plane_x: float
    focal_plane_y: float
    orientation: float
    pixel_size: float
    amplifiers: tuple[Amplifier, ...] = field(repr=False)

    def record(self, instrument: str) -> dict[str, Any]:
        """The ``detector`` dimension record."""
        return {
            "instrument": instrument,
            "id": self.id,
            "name": self.name,
            "nx": self.nx,
            "ny": self.ny,
            "focal_plane_x": self.focal_plane_x,
            "focal_plane_y": self.focal_plane_y,
            "orientation": self.orientation,
            "pixel_size": self.pixel_size,
        }


def camera_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """An independent random generator for one purpose (and keys) of a camera or survey seed."""
    entropy = [int(seed), zlib.crc32(purpose.encode()), *(int(k) for k in keys)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _rotation(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _sky_matrix(rotation_deg: float) -> np.ndarray:
    """Focal-plane (X, Y) -> tangent-plane (xi east, eta north) direction matrix (det = -1)."""
    t = math.radians(rotation_deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[-c, s], [s, c]])


def rotate_ellipticity(e1: Any, e2: Any, angle_deg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ellipticity in a frame rotated by ``angle_deg`` (counter-clockwise) from the input frame."""
    t = np.radians(2.0 * np.asarray(angle_deg, dtype=float))
    c, s = np.cos(t), np.sin(t)
    e1 = np.asarray(e1, dtype=float)
    e2 = np.asarray(e2, dtype=float)
    return e1 * c + e2 * s, -e1 * s + e2 * c


def gnomonic(ra: Any, dec: Any, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic (TAN) standard coordinates (xi east, eta north; degrees) about (ra0, dec0)."""
    a = np.radians(np.asarray(ra, dtype=float) - ra0)
    d = np.radians(np.asarray(dec, dtype=float))
    d0 = math.radians(dec0)
    den = np.sin(d) * math.sin(d0) + np.cos(d) * math.cos(d0) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / den
    eta = (np.sin(d) * math.cos(d0) - np.cos(d) * math.sin(d0) * np.cos(a)) / den
    return np.degrees(xi), np.degrees(eta)


def inverse_gnomonic(xi: Any, eta: Any, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of gnomonic standard coordinates (degrees) about (ra0, dec0)."""
    x = np.radians(np.asarray(xi, dtype=float))
    y = np.radians(np.asarray(eta, dtype=float))
    d0 = math.radians(dec0)
    den = math.cos(d0) - y * math.sin(d0)
    ra = ra0 + np.degrees(np.arctan2(x, den))
    dec = np.degrees(np.arctan2(math.sin(d0) + y * math.cos(d0), np.hypot(x, den)))
    return np.mod(ra, 360.0), dec


class SimCam(Instrument):
    """The simulated survey's camera (see the module docstring for conventions).

    Parameters
    ----------
    config : SimCamConfig, optional
        Geometry, electronics, sensor and optics; the default is a 2x2 mosaic of 1024x1024
        detectors at 0.2 arcsec per pixel.
    """

    name = "SimCam"

    def __init__(self, config: SimCamConfig | None = None) -> None:
        self.config = config or SimCamConfig()
        self._detectors = self._build_detectors()
        self._cache: dict[tuple, np.ndarray] = {}
        cfg = self.config
        #: mm of focal plane per pixel, and degrees of sky per mm.
        self.pixel_mm = cfg.pixel_size_um / 1000.0
        self.deg_per_mm = cfg.pixel_scale_arcsec / 3600.0 / self.pixel_mm
        self.field_radius_mm = self._field_radius_mm()
        #: Distortion coefficient k (mm^-2): displacement distortion_edge_px at the field corner.
        self.distortion_k = cfg.distortion_edge_px * self.pixel_mm / self.field_radius_mm**3

    # ----------------------------------------------------------------- configuration and records
    def config_json(self) -> str:
        """The configuration as JSON (to store with a repository and rebuild the camera)."""
        return json.dumps(asdict(self.config), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SimCam:
        """Rebuild a camera from :meth:`config_json` output."""
        return cls(SimCamConfig(**json.loads(text)))

    def physical_filter_records(self) -> list[dict[str, Any]]:
        """Records of the ``physical_filter`` element: ``instrument``, ``name``, ``band``."""
        return [{"instrument": self.name, "name": f.name, "band": f.band} for f in FILTERS.values()]

    def detector_records(self) -> list[dict[str, Any]]:
        """Records of the ``detector`` element, one per detector."""
        return [det.record(self.name) for det in self._detectors]

    @property
    def detectors(self) -> tuple[Detector, ...]:
        """All detectors, in id order."""
        return self._detectors

    def detector(self, detector_id: int) -> Detector:
        """The detector with this id; an unknown id raises :class:`InvalidDataIdError`."""
        if not 0 <= int(detector_id) < len(self._detectors):
            raise InvalidDataIdError(
                f"SimCam has no detector {detector_id} (ids 0..{len(self._detectors) - 1})"
            )
        return self._detectors[int(detector_id)]

    @staticmethod
    def filter(band_or_name: str) -> Filter:
        """The filter of a band (``'r'``) or physical filter name (``'SimCam-r'``)."""
        for f in FILTERS.values():
            if band_or_name in (f.band, f.name):
                return f
        known = ", ".join(f.name for f in FILTERS.values())
        raise DrpError(f"SimCam has no filter {band_or_name!r} (known: {known})")

    def _build_detectors(self) -> tuple[Detector, ...]:
        cfg = self.config
        cols, rows = cfg.layout
        pixel_mm = cfg.pixel_size_um / 1000.0
        pitch_x = cfg.nx * pixel_mm + cfg.gap_mm
        pitch_y = cfg.ny * pixel_mm + cfg.gap_mm
        detectors = []
        for det_id in range(cfg.n_detectors):
            row, col = divmod(det_id, cols)
            rng = camera_rng(cfg.seed, "detector", det_id)
            orientation = float(rng.normal(0.0, cfg.detector_rotation_sigma_deg))
            amps = self._build_amplifiers(rng)
            detectors.append(
                Detector(
                    id=det_id,
                    name=f"S{row}{col}",
                    nx=cfg.nx,
                    ny=cfg.ny,
                    focal_plane_x=round((col - (cols - 1) / 2) * pitch_x, 6),
                    focal_plane_y=round((row - (rows - 1) / 2) * pitch_y, 6),
                    orientation=round(orientation, 6),
                    pixel_size=cfg.pixel_size_um,
                    amplifiers=amps,
                )
            )
        return tuple(detectors)

    def _build_amplifiers(self, rng: np.random.Generator) -> tuple[Amplifier, ...]:
        cfg = self.config
        width = cfg.nx // cfg.n_amps
        amps = []
        for k in range(cfg.n_amps):
            gain = float(cfg.gain_mean * np.clip(1.0 + 0.03 * rng.normal(), 0.9, 1.1))
            read_noise = float(cfg.read_noise_mean * np.clip(1.0 + 0.1 * rng.normal(), 0.7, 1.3))
            bias = float(round(cfg.bias_level_adu + rng.normal(0.0, 30.0), 2))
            full_well_read = cfg.full_well * (1.0 - cfg.nonlinearity)
            saturation = int(math.floor(bias + 0.97 * full_well_read / gain))
            amps.append(
                Amplifier(
                    index=k,
                    name=f"AMP{k}",
                    x0=k * width,
                    width=width,
                    ny=cfg.ny,
                    serial_overscan=cfg.serial_overscan,
                    parallel_overscan=cfg.parallel_overscan,
                    gain=round(gain, 5),
                    read_noise=round(read_noise, 4),
                    bias_level=bias,
                    saturation_adu=saturation,
                )
            )
        return tuple(amps)

    def _field_radius_mm(self) -> float:
        corners = []
        for det in self._detectors:
            for x in (-0.5, det.nx - 0.5):
                for y in (-0.5, det.ny - 0.5):
                    corners.append(self.pixel_to_focal_plane(det.id, x, y))
        return float(max(math.hypot(float(cx), float(cy)) for cx, cy in corners))

    # --------------------------------------------------------------------------------- geometry
    @property
    def field_radius_arcsec(self) -> float:
        """Radius of the circle around the boresight that holds every detector (arcsec)."""
        return self.field_radius_mm * self.deg_per_mm * 3600.0

    def pixel_to_focal_plane(self, detector: int, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Focal-plane position (mm) of detector pixel coordinates (0-based)."""
        det = self.detector(detector)
        pixel_mm = self.config.pixel_size_um / 1000.0
        dx = (np.asarray(x, dtype=float) - (det.nx - 1) / 2.0) * pixel_mm
        dy = (np.asarray(y, dtype=float) - (det.ny - 1) / 2.0) * pixel_mm
        r = _rotation(det.orientation)
        return (
            det.focal_plane_x + r[0, 0] * dx + r[0, 1] * dy,
            det.focal_plane_y + r[1, 0] * dx + r[1, 1] * dy,
        )

    def focal_plane_to_pixel(
        self, detector: int, fx: Any, fy: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Detector pixel coordinates (0-based) of a focal-plane position (mm)."""
        det = self.detector(detector)
        dx = np.asarray(fx, dtype=float) - det.focal_plane_x
        dy = np.asarray(fy, dtype=float) - det.focal_plane_y
        r = _rotation(det.orientation).T
        return (
            (r[0, 0] * dx + r[0, 1] * dy) / self.pixel_mm + (det.nx - 1) / 2.0,
            (r[1, 0] * dx + r[1, 1] * dy) / self.pixel_mm + (det.ny - 1) / 2.0,
        )

    def distort(self, fx: Any, fy: Any) -> tuple[np.ndarray, np.ndarray]:
        """Actual focal-plane position (mm) of an ideal (undistorted, gnomonic) position."""
        fx = np.asarray(fx, dtype=float)
        fy = np.asarray(fy, dtype=float)
        factor = 1.0 + self.distortion_k * (fx * fx + fy * fy)
        return fx * factor, fy * factor

    def undistort(self, fx: Any, fy: Any) -> tuple[np.ndarray, np.ndarray]:
        """Ideal focal-plane position (mm) of an actual position (inverse of :meth:`distort`)."""
        fx = np.asarray(fx, dtype=float)
        fy = np.asarray(fy, dtype=float)
        ra = np.hypot(fx, fy)
        r = ra.copy()
        k = self.distortion_k
        for _ in range(6):  # Newton on r (1 + k r^2) = ra; converges to 1e-15 in 3-4 steps
            r -= (r * (1.0 + k * r * r) - ra) / (1.0 + 3.0 * k * r * r)
        scale = np.divide(r, ra, out=np.ones_like(ra), where=ra > 0)
        return fx * scale, fy * scale

    def focal_plane_to_sky(
        self, fx: Any, fy: Any, ra: float, dec: float, rotation: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sky position (deg) of an actual focal-plane position (mm) for a pointing."""
        ix, iy = self.undistort(fx, fy)
        m = _sky_matrix(rotation) * self.deg_per_mm
        return inverse_gnomonic(m[0, 0] * ix + m[0, 1] * iy, m[1, 0] * ix + m[1, 1] * iy, ra, dec)

    def sky_to_focal_plane(
        self, ra_src: Any, dec_src: Any, ra: float, dec: float, rotation: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actual focal-plane position (mm) of sky positions (deg) for a pointing."""
        xi, eta = gnomonic(ra_src, dec_src, ra, dec)
        m = _sky_matrix(rotation) / self.deg_per_mm  # the matrix is its own inverse
        return self.distort(m[0, 0] * xi + m[0, 1] * eta, m[1, 0] * xi + m[1, 1] * eta)

    def pixel_to_sky(
        self, detector: int, x: Any, y: Any, ra: float, dec: float, rotation: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sky position (deg) of detector pixel coordinates for a pointing (exact model)."""
        fx, fy = self.pixel_to_focal_plane(detector, x, y)
        return self.focal_plane_to_sky(fx, fy, ra, dec, rotation)

    def sky_to_pixel(
        self, detector: int, ra_src: Any, dec_src: Any, ra: float, dec: float, rotation: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Detector pixel coordinates of sky positions (deg) for a pointing (exact model)."""
        fx, fy = self.sky_to_focal_plane(ra_src, dec_src, ra, dec, rotation)
        return self.focal_plane_to_pixel(detector, fx, fy)

    def wcs_header(
        self, detector: int, ra: float, dec: float, rotation: float, x_offset: float = 0.0
    ) -> fits.Header:
        """TAN-SIP WCS cards of a detector for a pointing.

        The forward SIP polynomial (order 5) represents the radial distortion to better than
        1e-3 pixel over the focal plane; the inverse (AP/BP, order 3) is exact.

        Parameters
        ----------
        detector : int
            Detector id.
        ra, dec, rotation : float
            Pointing: boresight (deg) and rotation angle (deg, see the module docstring).
        x_offset : float
            Column of the described image at detector column 0 (an amplifier's raw image that
            starts at detector column ``x0`` has ``x_offset = -x0``).
        """
        det = self.detector(detector)
        # The optical axis in 0-based detector pixels: SIP is centred there.
        axis_x, axis_y = self.focal_plane_to_pixel(det.id, 0.0, 0.0)
        cd = _sky_matrix(rotation) @ _rotation(det.orientation) * self.deg_per_mm * self.pixel_mm
        k = self.distortion_k * self.pixel_mm**2  # per pixel^2
        hdr = fits.Header()
        hdr["WCSAXES"] = (2, "number of WCS axes")
        hdr["CTYPE1"] = ("RA---TAN-SIP", "TAN projection with SIP distortion")
        hdr["CTYPE2"] = ("DEC--TAN-SIP", "TAN projection with SIP distortion")
        hdr["CUNIT1"] = ("deg", "unit of CRVAL1 and CD1_*")
        hdr["CUNIT2"] = ("deg", "unit of CRVAL2 and CD2_*")
        hdr["CRVAL1"] = (float(ra), "[deg] RA of the reference point")
        hdr["CRVAL2"] = (float(dec), "[deg] Dec of the reference point")
        hdr["CRPIX1"] = (float(axis_x) + 1.0 + x_offset, "reference pixel (optical axis)")
        hdr["CRPIX2"] = (float(axis_y) + 1.0, "reference pixel (optical axis)")
        for i in range(2):
            for j in range(2):
                hdr[f"CD{i + 1}_{j + 1}"] = (float(cd[i, j]), "[deg/pixel] linear transform")
        hdr["RADESYS"] = ("ICRS", "celestial reference system")
        forward = {(3, 0): -k, (1, 2): -k, (5, 0): 3 * k * k, (3, 2): 6 * k * k, (1, 4): 3 * k * k}
        inverse = {(3, 0): k, (1, 2): k}
        hdr["A_ORDER"] = (5, "SIP forward polynomial order")
        for (p, q), v in forward.items():
            hdr[f"A_{p}_{q}"] = v
        hdr["B_ORDER"] = (5, "SIP forward polynomial order")
        for (p, q), v in forward.items():
            hdr[f"B_{q}_{p}"] = v
        hdr["AP_ORDER"] = (3, "SIP inverse polynomial order")
        for (p, q), v in inverse.items():
            hdr[f"AP_{p}_{q}"] = v
        hdr["BP_ORDER"] = (3, "SIP inverse polynomial order")
        for (p, q), v in inverse.items():
            hdr[f"BP_{q}_{p}"] = v
        return hdr

    def wcs(self, detector: int, ra: float, dec: float, rotation: float) -> WCS:
        """The astropy TAN-SIP WCS of a detector's assembled image for a pointing."""
        return WCS(self.wcs_header(detector, ra, dec, rotation))

    def footprint(self, ra: float, dec: float, rotation: float) -> list[tuple[float, float]]:
        """Sky vertices (deg) of the rectangle enclosing all detectors, for a pointing."""
        xs, ys = [], []
        for det in self._detectors:
            for x in (-0.5, det.nx - 0.5):
                for y in (-0.5, det.ny - 0.5):
                    fx, fy = self.pixel_to_focal_plane(det.id, x, y)
                    xs.append(float(fx))
                    ys.append(float(fy))
        box_x = [min(xs), max(xs), max(xs), min(xs)]
        box_y = [min(ys), min(ys), max(ys), max(ys)]
        ras, decs = self.focal_plane_to_sky(box_x, box_y, ra, dec, rotation)
        return [(float(a), float(d)) for a, d in zip(ras, decs, strict=True)]

    # ----------------------------------------------------------------------------------- optics
    def optical_psf_params(
        self, detector: int, x: Any, y: Any, band: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Optical PSF FWHM (pixels) and ellipticity (e1, e2 in the detector's pixel frame).

        With ``rho = r / R`` the field radius r in units of the focal-plane corner radius R:
        ``fwhm = optical_fwhm_arcsec * psf_scale(band) * (1 + optical_fwhm_growth * rho^2)`` and
        ``e = optical_e_edge * rho^2`` with the major axis along the radius vector
        (astigmatism-like: ``e1 + i e2 = e exp(2i phi)`` in focal-plane axes, phi the position
        angle of the field point), rotated into the detector's pixel axes.
        """
        cfg = self.config
        fx, fy = self.pixel_to_focal_plane(detector, x, y)
        rho2 = (fx * fx + fy * fy) / self.field_radius_mm**2
        scale = self.filter(band).psf_scale
        fwhm = cfg.optical_fwhm_arcsec * scale * (1.0 + cfg.optical_fwhm_growth * rho2)
        phi = np.arctan2(fy, fx)
        e = cfg.optical_e_edge * rho2
        e1, e2 = rotate_ellipticity(
            e * np.cos(2 * phi), e * np.sin(2 * phi), self.detector(detector).orientation
        )
        return fwhm / cfg.pixel_scale_arcsec, e1, e2

    def optical_psf(self, detector: int, x: float, y: float, band: str) -> galsim.GSObject:
        """The telescope/camera part of the PSF at a detector position (unit flux, pixel units).

        A GalSim Gaussian with the FWHM and ellipticity of :meth:`optical_psf_params`; convolve
        it with an atmospheric part to get the full PSF.
        """
        import galsim  # imported here: reading headers and records does not need GalSim

        fwhm, e1, e2 = self.optical_psf_params(detector, x, y, band)
        return galsim.Gaussian(fwhm=float(fwhm)).shear(e1=float(e1), e2=float(e2))

    # ---------------------------------------------------------------------------- electronics
    def apply_nonlinearity(self, electrons: Any) -> np.ndarray:
        """What the camera reads for ``electrons`` in a pixel (the documented quadratic)."""
        e = np.asarray(electrons, dtype=float)
        return e * (1.0 - self.config.nonlinearity * e / self.config.full_well)

    def linearize(self, measured: Any) -> np.ndarray:
        """Electrons in a pixel from the measured (nonlinear) electrons: inverse of the quadratic."""
        m = np.asarray(measured, dtype=float)
        c = self.config.nonlinearity / self.config.full_well
        if c == 0.0:
            return m.copy()
        disc = np.clip(1.0 - 4.0 * c * m, 0.0, None)
        return 2.0 * m / (1.0 + np.sqrt(disc))

    def bias_structure(self, detector: int) -> np.ndarray:
        """Fixed bias pattern of the assembled data area (ADU, float32, ny x nx).

        Per amplifier: a decaying ramp over the first columns read, a column-to-column pattern
        (0.5 ADU rms) and a 1 ADU bottom-to-top gradient. The amplifier bias levels and the
        per-exposure row drift are not included (they are common to data and overscan).
        """
        key = ("bias", int(detector))
        if key not in self._cache:
            det = self.detector(detector)
            rng = camera_rng(self.config.seed, "bias-structure", det.id)
            out = np.empty((det.ny, det.nx), dtype=np.float32)
            rows = np.linspace(-0.5, 0.5, det.ny)[:, None]
            for amp in det.amplifiers:
                cols = np.arange(amp.width)
                ramp = rng.uniform(3.0, 8.0) * np.exp(-cols / rng.uniform(3.0, 8.0))
                pattern = ramp + rng.normal(0.0, 0.5, amp.width)
                out[:, amp.x0 : amp.x0 + amp.width] = pattern[None, :] + rows
            self._cache[key] = out
        return self._cache[key]

    # -------------------------------------------------------------------------------- sensor
    def _defect_layout(self, detector: int) -> dict[str, np.ndarray]:
        key = ("defect-layout", int(detector))
        if key not in self._cache:
            det = self.detector(detector)
            cfg = self.config
            rng = camera_rng(cfg.seed, "defects", det.id)
            n_hot = rng.poisson(cfg.hot_pixel_fraction * det.nx * det.ny)
            hot_idx = rng.choice(det.nx * det.ny, size=n_hot, replace=False)
            hot_rate = rng.lognormal(np.log(5.0), 1.0, n_hot)
            columns = rng.choice(np.arange(2, det.nx - 2), size=cfg.n_bad_columns, replace=False)
            starts = rng.integers(0, det.ny // 2, size=cfg.n_bad_columns)
            self._cache[key] = {
                "hot_idx": np.sort(hot_idx),
                "hot_rate": hot_rate,
                "columns": columns,
                "starts": starts,
            }
        return self._cache[key]

    def _bad_column_mask(self, detector: int, kind: str) -> np.ndarray:
        """Pixels of the dead (even index) or hot (odd index) bad-column segments."""
        det = self.detector(detector)
        layout = self._defect_layout(detector)
        mask = np.zeros((det.ny, det.nx), dtype=bool)
        for k, (col, start) in enumerate(zip(layout["columns"], layout["starts"], strict=True)):
            if (k % 2 == 0) == (kind == "dead"):
                mask[start:, col] = True
        return mask

    def dark_current(self, detector: int) -> np.ndarray:
        """Dark current (e-/s per pixel, float32): uniform level, hot pixels and hot columns."""
        key = ("dark", int(detector))
        if key not in self._cache:
            det = self.detector(detector)
            layout = self._defect_layout(detector)
            dark = np.full(det.ny * det.nx, self.config.dark_current, dtype=np.float32)
            dark[layout["hot_idx"]] += layout["hot_rate"].astype(np.float32)
            dark = dark.reshape(det.ny, det.nx)
            dark[self._bad_column_mask(detector, "hot")] += np.float32(20.0)
            self._cache[key] = dark
        return self._cache[key]

    def defects(self, detector: int) -> np.ndarray:
        """The camera's defect list as a mask: bad columns and hot pixels (> 0.5 e-/s)."""
        det = self.detector(detector)
        mask = self._bad_column_mask(detector, "dead") | self._bad_column_mask(detector, "hot")
        hot = self.dark_current(detector) > 0.5
        return (mask | hot).reshape(det.ny, det.nx)

    def illumination(self, fx: Any, fy: Any, band: str) -> np.ndarray:
        """Vignetting/illumination: ``1 - vignetting * vignetting_scale * rho^2`` (rho as above)."""
        depth = self.config.vignetting * self.filter(band).vignetting_scale
        fx = np.asarray(fx, dtype=float)
        fy = np.asarray(fy, dtype=float)
        return 1.0 - depth * (fx * fx + fy * fy) / self.field_radius_mm**2

    def flat(self, detector: int, band: str) -> np.ndarray:
        """True flat-field response of a detector in a band (float32, ny x nx, 1 on axis).

        Pixel response non-uniformity (Gaussian, ``prnu`` rms) x a smooth, band-dependent QE
        pattern (1% linear/cross terms) x :meth:`illumination`; dead columns respond at 10%.
        """
        band = self.filter(band).band
        key = ("flat", int(detector), band)
        if key not in self._cache:
            det = self.detector(detector)
            rng = camera_rng(self.config.seed, "prnu", det.id)
            prnu = 1.0 + self.config.prnu * rng.standard_normal((det.ny, det.nx))
            coeffs = camera_rng(self.config.seed, "qe", det.id, ord(band)).normal(0.0, 0.01, 3)
            u = np.linspace(-1.0, 1.0, det.nx)[None, :]
            v = np.linspace(-1.0, 1.0, det.ny)[:, None]
            qe = 1.0 + coeffs[0] * u + coeffs[1] * v + coeffs[2] * u * v
            yy, xx = np.mgrid[0 : det.ny, 0 : det.nx]
            fx, fy = self.pixel_to_focal_plane(det.id, xx, yy)
            flat = prnu * qe * self.illumination(fx, fy, band)
            flat[self._bad_column_mask(detector, "dead")] *= 0.1
            self._cache[key] = flat.astype(np.float32)
        return self._cache[key]

    # ----------------------------------------------------------------- header translation
    def data_id_from_header(self, header: fits.Header) -> dict[str, Any]:
        """dataId (instrument, visit, detector) of a SimCam raw from its primary header.

        Calibration exposures are visits too (``observation_type`` bias, dark or flat).
        """
        if not self.matches_header(header):
            raise DrpError(f"not a SimCam header (INSTRUME={header.get('INSTRUME')!r})")
        try:
            return {
                "instrument": self.name,
                "visit": int(header["EXPNUM"]),
                "detector": int(header["CCDNUM"]),
            }
        except KeyError as exc:
            raise DrpError(f"SimCam header lacks {exc.args[0]}") from None

    def visit_record_from_header(self, header: fits.Header) -> dict[str, Any]:
        """The ``visit`` dimension record of a SimCam raw from its primary header.

        Science exposures carry the reported pointing and the camera footprint as region;
        calibration exposures have no pointing, airmass or region.
        """
        obstype = header.get("OBSTYPE")
        if obstype not in OBSERVATION_TYPES:
            raise DrpError(f"SimCam raw {header.get('EXPNUM')} has unknown OBSTYPE {obstype!r}")
        values: dict[str, Any] = {
            "instrument": self.name,
            "id": int(header["EXPNUM"]),
            "physical_filter": header["FILTER"],
            "band": self.filter(header["FILTER"]).band,
            "day_obs": int(header["DAYOBS"]),
            "exposure_time": float(header["EXPTIME"]),
            "datetime_begin": header["DATE-OBS"],
            "mjd": float(header["MJD-OBS"]),
            "target": header["OBJECT"],
            "observation_type": OBSERVATION_TYPES[obstype],
        }
        if obstype == "object":
            pointing = float(header["RA"]), float(header["DEC"]), float(header["ROTANGLE"])
            values.update(
                ra=pointing[0],
                dec=pointing[1],
                rotation_angle=pointing[2],
                airmass=float(header["AIRMASS"]),
                region=json.dumps([list(p) for p in self.footprint(*pointing)]),
            )
        return dimension_record("visit", values)

    def detector_region(
        self, detector: int, ra: float, dec: float, rotation: float
    ) -> list[list[float]]:
        """Sky corners ``[[ra, dec], ...]`` (deg) of a detector's pixel edges for a pointing."""
        det = self.detector(detector)
        x = [-0.5, det.nx - 0.5, det.nx - 0.5, -0.5]
        y = [-0.5, -0.5, det.ny - 0.5, det.ny - 0.5]
        ras, decs = self.pixel_to_sky(det.id, x, y, ra, dec, rotation)
        return [[float(a), float(d)] for a, d in zip(ras, decs, strict=True)]

    def ingest_items(self, paths: Sequence[str]) -> list[IngestItem]:
        """One ``raw`` dataset (storage class ``Fits``, kept as it is) per SimCam raw file.

        Each item carries the ``day_obs`` and ``visit`` records and, for science exposures, the
        detector's ``visit_detector_region`` (through the reported pointing).
        """
        items = []
        for path in paths:
            try:
                header = fits.getheader(path, 0)
            except (OSError, ValueError) as exc:
                raise DrpError(f"cannot read the primary header of {path}: {exc}") from None
            if not self.matches_header(header):
                raise DrpError(f"{path} is not a SimCam raw (INSTRUME={header.get('INSTRUME')!r})")
            data_id = self.data_id_from_header(header)
            self.detector(data_id["detector"])
            visit = self.visit_record_from_header(header)
            records: dict[str, list[dict[str, Any]]] = {
                "day_obs": [{"instrument": self.name, "id": visit["day_obs"]}],
                "visit": [visit],
            }
            if header["OBSTYPE"] == "object":
                corners = self.detector_region(
                    data_id["detector"], header["RA"], header["DEC"], header["ROTANGLE"]
                )
                records["visit_detector_region"] = [
                    {
                        "instrument": self.name,
                        "visit": data_id["visit"],
                        "detector": data_id["detector"],
                        "region": json.dumps(corners),
                    }
                ]
            items.append(
                IngestItem(
                    dataset_type=RAW_DATASET_TYPE,
                    dimensions=("instrument", "visit", "detector"),
                    storage_class="Fits",
                    data_id=data_id,
                    records=records,
                    source=path,
                )
            )
        return items
