"""DECam, the Dark Energy Camera on the Blanco 4-m telescope, and its Community Pipeline products.

The NOIRLab DECam Community Pipeline (CP) delivers each exposure as three multi-extension files,
one extension per CCD: the calibrated image (``ooi``), its inverse-variance weight map (``oow``)
and a data-quality map (``ood``). This module names DECam's filters and CCDs, translates CP
headers into dataIds and dimension records, groups the three files of each exposure and CCD
(:func:`group_cp_files`) and reads one CCD into an :class:`repo.exposure.Exposure`
(:func:`read_cp_triplet`).

Conventions of the reader
-------------------------
* ``variance = 1 / weight`` in float32 where ``weight > 0``; elsewhere (zero, negative or NaN
  weight) the variance is ``+inf`` and ``NO_DATA`` is set, as it is for non-finite image pixels.
* Data-quality values are mapped to mask planes by :data:`CP_DQ_CODES` (CP ``PLVER`` >= V3.5,
  where the ood pixels hold integer codes) or :data:`CP_DQ_BITS` (older CP versions, bit masks);
  values or bits not listed become ``SUSPECT``.
* The WCS is the CP's TPV solution from the CCD header, which astropy's wcslib evaluates natively.
* The photometric calibration is not in CP headers; pass ``zero_point`` (the legacypipe/
  survey-ccds ``ccdzpt`` convention: AB magnitude of one image unit per second).

Geometry (approximate)
----------------------
DECam has 62 science CCDs of 2046 x 4094 usable 15 micron pixels (CCDNUM 1-62, DETPOS S1-S31 and
N1-N31); the 8 guide/focus CCDs are not science detectors and are not listed. The focal-plane
positions in :meth:`DECam.detector_records` come from a regular model of the layout: rows of 3, 4,
5, 6, 6, 7 CCDs on each side of the centre, a row pitch of 2249 pixels across the CCDs' short
(x) axis and a CCD pitch of 4249 pixels along their long (y) axis (nominal 201 and 153 pixel gaps);
the N half is the S half rotated by 180 degrees. The focal-plane frame has x and y along the S
CCDs' pixel axes, with the origin on the optical axis. Checked against the fixture: each cut-out
lands on its own CCD in this model, and the CCD offsets implied by the CP WCS (with the cut-out
origins implied by the PSFEx polynomial origins) agree with it to about 10 pixels. Good enough for
footprints and records, not for astrometry.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import fsspec
import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from scipy.spatial import ConvexHull

from ..errors import CorruptDatasetError, DimensionRecordError, DrpError, StorageError
from ..exposure import DEFAULT_MASK_PLANES, Exposure, PhotoCalib
from ..psf import PsfexPsf
from .base import IngestItem, Instrument

#: CTIO longitude (degrees east), for the local-noon rollover of the observing night.
CTIO_LONGITUDE_DEG = -70.81489
#: Usable pixels of a CP-processed science CCD.
CCD_NX, CCD_NY = 2046, 4094
PIXEL_SIZE_UM = 15.0
#: Approximate mean pixel scale (arcsec) of the TPV solutions (CD 0.26236 x PV1_1 1.0057).
PIXEL_SCALE_ARCSEC = 0.2639
#: Row pitch (across the CCD x axis) and CCD pitch within a row (along y), in pixels.
ROW_PITCH_PX = 2048 + 201
CCD_PITCH_PX = 4096 + 153
#: The CCDs of each row of the S half, from the centre outwards (first and last DETPOS number).
_S_ROWS = ((1, 7), (8, 13), (14, 19), (20, 24), (25, 28), (29, 31))
#: Dataset type of an ingested CP image/weight/dq triplet.
INSTCAL_DATASET_TYPE = "instcal"

#: CP data-quality codes (PLVER >= V3.5) and the mask planes they set. Codes from the CP
#: documentation as used by legacypipe's ``remap_dq_cp_codes``: 1 bad pixel, 2 no value,
#: 3 saturated, 4 bleed trail, 5 cosmic ray, 6 low weight, 7 multi-exposure transient,
#: 8 long streak. LSST keeps bleed trails in SAT; low weight and transients are SUSPECT.
CP_DQ_CODES: dict[int, str] = {
    1: "BAD",
    2: "NO_DATA",
    3: "SAT",
    4: "SAT",
    5: "CR",
    6: "SUSPECT",
    7: "SUSPECT",
    8: "STREAK",
}
#: CP data-quality bits (PLVER < V3.5): 1 bad, 2 saturated, 4 interpolated, 16 cosmic ray,
#: 64 bleed trail, 128 multi-exposure transient.
CP_DQ_BITS: dict[int, str] = {1: "BAD", 2: "SAT", 4: "INTRP", 16: "CR", 64: "SAT", 128: "SUSPECT"}

#: legacypipe's merged PSFEx file of a CP image: ``<image stem>-psfex.fits``.
_PSFEX_NAME = re.compile(r"^(?P<stem>c4d_\d{6}_\d{6}_ooi_[A-Za-z0-9]+_[A-Za-z0-9]+)-psfex\.fits$")
#: The Legacy Surveys' CCD tables, and the columns drp reads from them.
_SURVEY_CCDS_NAME = re.compile(r"^survey-ccds.*\.fits(?:\.gz)?$")
SURVEY_CCDS_DATASET_TYPE = "surveyCcds"
SURVEY_CCDS_COLUMNS = ("expnum", "ccdname", "filter", "exptime", "ccdzpt", "fwhm", "ccdraoff",
                       "ccddecoff", "ccdnphotom", "ccdnastrom")  # fmt: skip
_CP_NAME = re.compile(
    r"^(?P<prefix>c4d_\d{6}_\d{6})_oo(?P<kind>[idw])_(?P<suffix>[A-Za-z0-9]+_[A-Za-z0-9]+"
    r"(?:\.[NS]\d{1,2})?)\.fits(?:\.fz)?$"
)
_KIND_NAMES = {"i": "image (ooi)", "w": "weight map (oow)", "d": "data-quality map (ood)"}

#: Primary-header keys copied into the Exposure metadata (when present).
_PRIMARY_METADATA = (
    "INSTRUME", "EXPNUM", "OBSID", "OBJECT", "OBSTYPE", "PROPID", "FILTER", "BAND", "EXPTIME",
    "DATE-OBS", "MJD-OBS", "AIRMASS", "TELRA", "TELDEC", "HA", "ZD", "AZ", "DIMMSEE", "NITE",
    "PROCTYPE", "PLVER", "PLPROCID",
)  # fmt: skip
#: Nominal zero points (AB mag of 1 electron/s at the zenith) and extinction (mag per airmass)
#: of DECam, as the Legacy Surveys' observing tools use them (legacysurvey/obsbot).
NOMINAL_ZERO_POINTS = {"g": 26.610, "r": 26.818, "z": 26.484}
EXTINCTION = {"g": 0.178, "r": 0.094, "z": 0.060}
NOMINAL_ZERO_POINT_ERR = 0.15
#: Extension-header keys copied into the Exposure metadata (when present).
_EXTENSION_METADATA = (
    "CCDNUM", "DETPOS", "DETECTOR", "GAINA", "GAINB", "RDNOISEA", "RDNOISEB", "SATURATA",
    "SATURATB", "SATURATE", "FWHM", "ELLIPTIC", "AVSKY", "AVSIG", "ARAWGAIN",
)  # fmt: skip


@dataclass(frozen=True)
class DECamFilter:
    """A DECam filter: our physical_filter name, its band and the CP ``FILTER`` code."""

    name: str
    band: str
    code: str

    @property
    def token(self) -> str:
        """The first word of the CP ``FILTER`` value (``'g'`` in ``'g DECam SDSS c0001 ...'``)."""
        return self.name.split("_")[0]


#: DECam's filters; physical_filter names are ``<filter>_<code>`` (dataId-safe).
FILTERS: tuple[DECamFilter, ...] = (
    DECamFilter("u_c0006", "u", "c0006"),
    DECamFilter("g_c0001", "g", "c0001"),
    DECamFilter("r_c0002", "r", "c0002"),
    DECamFilter("i_c0003", "i", "c0003"),
    DECamFilter("z_c0004", "z", "c0004"),
    DECamFilter("Y_c0005", "Y", "c0005"),
    DECamFilter("VR_c0007", "VR", "c0007"),
    DECamFilter("N964_c0008", "N964", "c0008"),
)


@dataclass(frozen=True)
class DECamDetector:
    """A science CCD: CCDNUM, DETPOS and its place in the layout model."""

    id: int
    name: str
    focal_plane_x_px: float
    focal_plane_y_px: float
    orientation: float

    def corners_px(self) -> np.ndarray:
        """Focal-plane pixel coordinates (4, 2) of the CCD's corners."""
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [CCD_NX / 2, CCD_NY / 2]
        return np.array([self.focal_plane_x_px, self.focal_plane_y_px]) + half


def _build_detectors() -> tuple[DECamDetector, ...]:
    south: dict[str, tuple[float, float]] = {}
    for row, (first, last) in enumerate(_S_ROWS):
        count = last - first + 1
        for k in range(count):
            south[f"S{first + k}"] = (
                -(row + 0.5) * ROW_PITCH_PX,
                (k - (count - 1) / 2) * CCD_PITCH_PX,
            )
    # CCDNUM: the S half from the outermost row inwards, then the N half from the centre out.
    s_order = [f"S{n}" for first, last in reversed(_S_ROWS) for n in range(first, last + 1)]
    n_order = [f"N{n}" for first, last in _S_ROWS for n in range(first, last + 1)]
    detectors = []
    for ccdnum, name in enumerate(s_order + n_order, start=1):
        x, y = south[name.replace("N", "S")]
        if name.startswith("N"):
            detectors.append(DECamDetector(ccdnum, name, -x, -y, 180.0))
        else:
            detectors.append(DECamDetector(ccdnum, name, x, y, 0.0))
    return tuple(detectors)


DETECTORS: tuple[DECamDetector, ...] = _build_detectors()
_DETECTOR_BY_ID = {d.id: d for d in DETECTORS}
_DETECTOR_BY_NAME = {d.name: d for d in DETECTORS}


@dataclass(frozen=True)
class CpTriplet:
    """The three CP files of one exposure and CCD, and the extension holding that CCD."""

    image: str
    weight: str
    dq: str
    visit: int
    detector: int
    extname: str


class DECam(Instrument):
    """The Dark Energy Camera and its Community Pipeline (CP) InstCal products."""

    name = "DECam"

    def physical_filter_records(self) -> list[dict[str, Any]]:
        """Records of DECam's filters (``instrument``, ``name``, ``band``)."""
        return [{"instrument": self.name, "name": f.name, "band": f.band} for f in FILTERS]

    def detector_records(self) -> list[dict[str, Any]]:
        """Records of the 62 science CCDs (focal-plane positions from the layout model)."""
        mm = PIXEL_SIZE_UM / 1000.0
        return [
            {
                "instrument": self.name,
                "id": d.id,
                "name": d.name,
                "nx": CCD_NX,
                "ny": CCD_NY,
                "focal_plane_x": d.focal_plane_x_px * mm,
                "focal_plane_y": d.focal_plane_y_px * mm,
                "orientation": d.orientation,
                "pixel_size": PIXEL_SIZE_UM,
            }
            for d in DETECTORS
        ]

    @staticmethod
    def filter_from_header(value: str) -> DECamFilter:
        """The filter of a CP ``FILTER`` value such as ``'z DECam SDSS c0004 9260.0 1520.0'``."""
        words = str(value).split()
        for f in FILTERS:
            if words and words[0] == f.token and f.code in words:
                return f
        known = ", ".join(f.name for f in FILTERS)
        raise DimensionRecordError(f"unknown DECam FILTER {value!r} (known filters: {known})")

    def detector(self, ccdnum_or_name: int | str) -> DECamDetector:
        """A science CCD by CCDNUM or DETPOS."""
        table: Mapping[Any, DECamDetector] = (
            _DETECTOR_BY_NAME if isinstance(ccdnum_or_name, str) else _DETECTOR_BY_ID
        )
        try:
            return table[ccdnum_or_name]
        except KeyError:
            raise DimensionRecordError(
                f"{ccdnum_or_name!r} is not a DECam science CCD (CCDNUM 1-62, S1-S31, N1-N31)"
            ) from None

    def translate_header(self, primary: fits.Header, ext: fits.Header) -> dict[str, Any]:
        """dataId values and dimension records of one CP CCD.

        Parameters
        ----------
        primary : astropy.io.fits.Header
            The primary header of a CP file.
        ext : astropy.io.fits.Header
            The header of the CCD's extension.

        Returns
        -------
        dict
            ``instrument``, ``visit`` (EXPNUM), ``detector`` (CCDNUM), ``physical_filter``,
            ``band``, ``day_obs`` (YYYYMMDD of the observing night, rolling over at local mean
            noon at CTIO), ``visit_record`` and ``detector_record``. The visit's ``ra``/``dec``
            are the pointing ``RA``/``DEC`` (``TELRA``/``TELDEC`` if absent), as legacypipe's
            ``ra_bore``/``dec_bore``; ``region`` is the approximate footprint of all CCDs.

        Raises
        ------
        repo.errors.DimensionRecordError
            Not a DECam header, or a required key missing or malformed.
        """
        instrument = str(primary.get("INSTRUME", "")).strip()
        if instrument.lower() != "decam":
            raise DimensionRecordError(f"not a DECam header (INSTRUME={instrument!r})")
        visit = _int_key(primary, "EXPNUM")
        ccdnum = _int_key(ext, "CCDNUM")
        detector = self.detector(ccdnum)
        detpos = str(ext.get("DETPOS", detector.name)).strip()
        if detpos != detector.name:
            raise DimensionRecordError(
                f"CCDNUM {ccdnum} is {detector.name} but the header says DETPOS={detpos!r}"
            )
        filt = self.filter_from_header(_str_key(primary, "FILTER"))
        start = _start_time(primary)
        day_obs = observing_night(start)
        ra, dec = _boresight(primary)
        visit_record = {
            "instrument": self.name,
            "id": visit,
            "physical_filter": filt.name,
            "band": filt.band,
            "day_obs": day_obs,
            "exposure_time": _float_key(primary, "EXPTIME"),
            "ra": ra,
            "dec": dec,
            "rotation_angle": 0.0,  # DECam has no rotator: the camera is fixed on the sky
            "datetime_begin": start.isot,
            "mjd": float(primary["MJD-OBS"]) if "MJD-OBS" in primary else float(start.mjd),
            "airmass": _float_key(primary, "AIRMASS"),
            "target": str(primary.get("OBJECT", "")).strip(),
            "observation_type": _observation_type(primary),
            "region": json.dumps(self.visit_region(ra, dec)),
        }
        detector_record = next(r for r in self.detector_records() if r["id"] == ccdnum)
        return {
            "instrument": self.name,
            "visit": visit,
            "detector": ccdnum,
            "physical_filter": filt.name,
            "band": filt.band,
            "day_obs": day_obs,
            "visit_record": visit_record,
            "detector_record": detector_record,
        }

    def visit_region(self, ra: float, dec: float) -> list[list[float]]:
        """Approximate sky footprint ``[[ra, dec], ...]`` of all CCDs for a boresight.

        The convex hull of the CCD corners of the layout model, projected with the mean pixel
        scale; DECam's fixed orientation puts CCD +y to the east and +x (S half) to the south.
        """
        corners = np.concatenate([d.corners_px() for d in DETECTORS])
        hull = corners[ConvexHull(corners).vertices]
        return _focal_plane_to_sky(hull, ra, dec)

    def detector_region(self, detector: int | str, ra: float, dec: float) -> list[list[float]]:
        """Approximate sky footprint ``[[ra, dec], ...]`` of one CCD for a boresight."""
        return _focal_plane_to_sky(self.detector(detector).corners_px(), ra, dec)

    def nominal_zero_point(
        self, band: str, metadata: Mapping[str, Any]
    ) -> tuple[float, float] | None:
        """DECam's nominal zero point of a CP image unit (ADU) per second.

        ``zp0 - 2.5 log10(gain) - k (airmass - 1)``: :data:`NOMINAL_ZERO_POINTS` in electrons
        per second at the zenith and :data:`EXTINCTION` per airmass, with the CCD's mean gain
        (``GAINA``, ``GAINB``). Over the 14 CCDs of the Legacy Surveys test cases it is
        within -0.16..+0.42 mag of their measured ``ccdzpt`` (rms 0.15, clouds included):
        the uncertainty returned.
        """
        gains = [metadata.get(key) for key in ("GAINA", "GAINB")]
        gains = [float(g) for g in gains if isinstance(g, int | float) and g > 0]
        airmass = metadata.get("AIRMASS")
        if band not in NOMINAL_ZERO_POINTS or not gains or not isinstance(airmass, int | float):
            return None
        gain = sum(gains) / len(gains)
        zero_point = NOMINAL_ZERO_POINTS[band] - 2.5 * math.log10(gain)
        return zero_point - EXTINCTION[band] * (float(airmass) - 1.0), NOMINAL_ZERO_POINT_ERR

    @classmethod
    def matches_file(cls, path: str, header: Mapping[str, Any]) -> bool:
        """DECam files by header, and the Legacy Surveys' PSFEx models by name
        (``<CP image stem>-psfex.fits``: their headers name no instrument)."""
        name = os.path.basename(path)
        return cls.matches_header(header) or bool(
            _PSFEX_NAME.match(name) or _SURVEY_CCDS_NAME.match(name)
        )

    def ingest_items(self, paths: Sequence[str]) -> list[IngestItem]:
        """One ``instcal`` Exposure per CP triplet (image + weight + dq) and CCD.

        Each item carries the ``day_obs`` and ``visit`` records and the CCD's
        ``visit_detector_region`` (its corners through the CP WCS). A PSFEx model among the
        files (legacypipe's ``<image stem>-psfex.fits``, one row per CCD) becomes the PSF of
        its image's Exposures, the CP's own PSF for stages to use or to check theirs against.
        """
        psfex, ccd_tables, images = {}, [], []
        for path in paths:
            name = os.path.basename(path)
            if match := _PSFEX_NAME.match(name):
                psfex[match["stem"]] = path
            elif _SURVEY_CCDS_NAME.match(name):
                ccd_tables.append(path)
            else:
                images.append(path)
        if len(ccd_tables) > 1:
            raise DrpError(
                f"{', '.join(ccd_tables)}: one survey-ccds table per run (ingest each into its own)"
            )
        triplets = group_cp_files(images)
        stems = {os.path.basename(t.image).split(".")[0] for t in triplets}
        for stem, path in psfex.items():
            if stem not in stems:
                raise DrpError(f"{path}: its CP image {stem}.*.fits is not among the files given")
        items = []
        for triplet in triplets:
            psf_path = psfex.get(os.path.basename(triplet.image).split(".")[0])
            primary, ext = _read_headers(triplet.image, triplet.extname)
            info = _translate(self, primary, ext, triplet.image)
            day_obs = {"instrument": self.name, "id": info["day_obs"]}
            footprint = {
                "instrument": self.name,
                "visit": info["visit"],
                "detector": info["detector"],
                "region": json.dumps(_image_footprint(ext, triplet.image, triplet.extname)),
            }
            items.append(
                IngestItem(
                    dataset_type=INSTCAL_DATASET_TYPE,
                    dimensions=("instrument", "visit", "detector"),
                    storage_class="Exposure",
                    data_id={
                        "instrument": self.name,
                        "visit": info["visit"],
                        "detector": info["detector"],
                    },
                    records={
                        "day_obs": [day_obs],
                        "visit": [info["visit_record"]],
                        "visit_detector_region": [footprint],
                    },
                    make=partial(read_cp_triplet, triplet, psfex=psf_path),
                    sources=(triplet.image, triplet.weight, triplet.dq)
                    + ((psf_path,) if psf_path else ()),
                )
            )
        for path in ccd_tables:
            items.append(
                IngestItem(
                    dataset_type=SURVEY_CCDS_DATASET_TYPE,
                    dimensions=("instrument",),
                    storage_class="Catalog",
                    data_id={"instrument": self.name},
                    make=partial(read_survey_ccds, path),
                    sources=(path,),
                )
            )
        return items


def _image_footprint(ext: fits.Header, path: str, extname: str) -> list[list[float]]:
    """Sky corners ``[[ra, dec], ...]`` of a CCD image (pixel edges) from its CP WCS."""
    nx, ny = ext.get("NAXIS1"), ext.get("NAXIS2")
    if not (isinstance(nx, int) and isinstance(ny, int) and nx > 0 and ny > 0):
        raise DrpError(f"{path}[{extname}]: no image size (NAXIS1/NAXIS2) in the header")
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = _read_wcs(ext, path, extname).pixel_to_world_values(x, y)
    return [[float(a), float(d)] for a, d in zip(ra, dec, strict=True)]


def _focal_plane_to_sky(points_px: np.ndarray, ra: float, dec: float) -> list[list[float]]:
    scale = math.radians(PIXEL_SCALE_ARCSEC / 3600.0)
    xi = points_px[:, 1] * scale  # east
    eta = -points_px[:, 0] * scale  # north
    ra0, dec0 = math.radians(ra), math.radians(dec)
    denom = math.cos(dec0) - eta * math.sin(dec0)
    ras = np.degrees(ra0 + np.arctan2(xi, denom)) % 360.0
    decs = np.degrees(np.arctan2(math.sin(dec0) + eta * math.cos(dec0), np.hypot(xi, denom)))
    return [[float(a), float(d)] for a, d in zip(ras, decs, strict=True)]


def observing_night(start: Time) -> int:
    """YYYYMMDD of the observing night containing ``start``: the local (CTIO mean solar time)
    date at the preceding noon."""
    local = start.to_datetime() + timedelta(hours=CTIO_LONGITUDE_DEG / 15.0 - 12.0)
    return local.year * 10000 + local.month * 100 + local.day


def _observation_type(primary: fits.Header) -> str:
    """science, bias, dark or flat, from DECam's OBSTYPE (object, zero, dark, dome flat)."""
    obstype = str(primary.get("OBSTYPE", "object")).strip().lower()
    kinds = {"object": "science", "zero": "bias", "bias": "bias", "dark": "dark"}
    if obstype in kinds:
        return kinds[obstype]
    if "flat" in obstype:
        return "flat"
    raise DimensionRecordError(f"unknown DECam OBSTYPE {obstype!r}")


def _start_time(primary: fits.Header) -> Time:
    text = _str_key(primary, "DATE-OBS")
    try:
        start = Time(text, format="isot", scale="utc")
    except ValueError:
        raise DimensionRecordError(f"DATE-OBS {text!r} is not an ISO date and time") from None
    start.precision = 6
    return start


def _boresight(primary: fits.Header) -> tuple[float, float]:
    ra_text = primary.get("RA", primary.get("TELRA"))
    dec_text = primary.get("DEC", primary.get("TELDEC"))
    if ra_text is None or dec_text is None:
        raise DimensionRecordError("header has no RA/DEC (or TELRA/TELDEC) boresight")
    try:
        ra = Angle(str(ra_text).strip(), unit="hourangle").deg
        dec = Angle(str(dec_text).strip(), unit="deg").deg
    except ValueError:
        raise DimensionRecordError(
            f"boresight RA={ra_text!r} DEC={dec_text!r} is not sexagesimal"
        ) from None
    return float(ra), float(dec)


def _int_key(header: fits.Header, key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DimensionRecordError(f"header {key} must be an integer, got {value!r}")
    return int(value)


def _float_key(header: fits.Header, key: str) -> float:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DimensionRecordError(f"header {key} must be a number, got {value!r}")
    return float(value)


def _str_key(header: fits.Header, key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DimensionRecordError(f"header {key} must be a non-empty string, got {value!r}")
    return value.strip()


# --------------------------------------------------------------------------------------------
# CP files


@contextmanager
def _open_fits(path: str) -> Iterator[fits.HDUList]:
    """Open a (possibly remote) FITS file lazily, closing it after use; errors name the file."""
    try:
        handle = fsspec.open(path, "rb").open()
    except FileNotFoundError:
        raise StorageError(f"{path}: no such file") from None
    with handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                warnings.filterwarnings("error", message=".*truncated.*")
                hdul = fits.open(handle, memmap=False)
                len(hdul)  # reads every header: a truncated file shows here
        except Exception as exc:  # astropy raises many types on non-FITS input
            raise CorruptDatasetError(f"{path}: not a readable FITS file ({exc})") from exc
        with hdul:
            yield hdul


def _ccd_extensions(hdul: fits.HDUList, path: str) -> dict[str, int]:
    """EXTNAME -> CCDNUM of the CCD extensions of a CP file."""
    ccds = {}
    for hdu in hdul[1:]:
        ccdnum = hdu.header.get("CCDNUM")
        if isinstance(ccdnum, int) and not isinstance(ccdnum, bool) and hdu.name:
            ccds[hdu.name] = ccdnum
    if not ccds:
        raise DrpError(f"{path}: not a DECam CP file (no extension with a CCDNUM)")
    return ccds


def _read_headers(path: str, extname: str) -> tuple[fits.Header, fits.Header]:
    with _open_fits(path) as hdul:
        if extname not in hdul:
            raise DrpError(f"{path}: no extension {extname!r}")
        return hdul[0].header.copy(), hdul[extname].header.copy()


def _translate(inst: DECam, primary: fits.Header, ext: fits.Header, path: str) -> dict[str, Any]:
    try:
        return inst.translate_header(primary, ext)
    except DimensionRecordError as exc:
        raise DimensionRecordError(f"{path}: {exc}") from exc


def _check_cp_primary(primary: fits.Header, path: str) -> int:
    """Check that a primary header is a DECam CP InstCal one; return its EXPNUM."""
    instrument = str(primary.get("INSTRUME", "")).strip()
    if instrument.lower() != "decam":
        raise DrpError(f"{path}: not a DECam file (INSTRUME={instrument!r})")
    proctype = str(primary.get("PROCTYPE", "")).strip()
    if proctype.lower() != "instcal":
        raise DrpError(f"{path}: not a CP InstCal product (PROCTYPE={proctype!r})")
    expnum = primary.get("EXPNUM")
    if isinstance(expnum, bool) or not isinstance(expnum, int):
        raise DrpError(f"{path}: the primary header has no integer EXPNUM")
    return expnum


def group_cp_files(paths: Sequence[str | os.PathLike[str]]) -> list[CpTriplet]:
    """Group CP image (ooi), weight (oow) and data-quality (ood) files by exposure and CCD.

    Files are matched by name (``..._ooi_...`` with ``..._oow_...`` and ``..._ood_...``) and
    checked by header: DECam, PROCTYPE InstCal, the same EXPNUM and the same CCD extensions.

    Returns
    -------
    list of CpTriplet
        One per exposure and CCD, sorted by (visit, detector).

    Raises
    ------
    repo.errors.DrpError
        A file that is not named or built like a DECam CP file, a group missing its image,
        weight or data-quality member, or members that disagree; the message names the file.
    """
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for path in map(os.fspath, paths):
        match = _CP_NAME.match(os.path.basename(path))
        if not match:
            raise DrpError(
                f"{path}: not a DECam CP file name (expected ..._ooi_..., _oow_ or _ood_ ...fits)"
            )
        key = (os.path.dirname(path), f"{match['prefix']}_oo?_{match['suffix']}")
        members = groups.setdefault(key, {})
        if match["kind"] in members:
            raise DrpError(f"{path}: duplicate of {members[match['kind']]}")
        members[match["kind"]] = path
    triplets = []
    for members in groups.values():
        triplets.extend(_triplets_of_group(members))
    return sorted(triplets, key=lambda t: (t.visit, t.detector))


def _triplets_of_group(members: dict[str, str]) -> list[CpTriplet]:
    some = next(iter(members.values()))
    for kind, what in _KIND_NAMES.items():
        if kind not in members:
            raise DrpError(f"{some}: its CP {what} is missing from the files given")
    layouts = {}
    for kind, path in members.items():
        with _open_fits(path) as hdul:
            layouts[kind] = (_check_cp_primary(hdul[0].header, path), _ccd_extensions(hdul, path))
    for kind in "wd":
        if layouts[kind] != layouts["i"]:
            raise DrpError(
                f"{members[kind]}: exposure/CCDs {layouts[kind]} do not match those of "
                f"{members['i']} {layouts['i']}"
            )
    expnum, ccds = layouts["i"]
    return [
        CpTriplet(members["i"], members["w"], members["d"], expnum, ccdnum, extname)
        for extname, ccdnum in ccds.items()
        if ccdnum in _DETECTOR_BY_ID
    ]


def read_survey_ccds(path: str | os.PathLike[str]) -> Table:
    """Read a Legacy Surveys CCD table (``survey-ccds-*.fits.gz``): per-CCD zero points
    (``ccdzpt``), seeing (``fwhm``, pixels) and astrometric offsets from Gaia (``ccdraoff``,
    ``ccddecoff``, arcsec), keyed by ``expnum`` and ``ccdname``; strings stripped.

    Raises :class:`DrpError` naming the file when it is unreadable or lacks those columns.
    """
    source = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            table = Table.read(source, hdu=1)
    except FileNotFoundError:
        raise StorageError(f"{source}: no such file") from None
    except Exception as exc:
        raise CorruptDatasetError(f"{source}: not a readable FITS table ({exc})") from exc
    missing = [c for c in SURVEY_CCDS_COLUMNS if c not in table.colnames]
    if missing:
        raise DrpError(f"{source}: not a survey-ccds table (no column {', '.join(missing)})")
    for name in table.colnames:
        if table[name].dtype.kind in "SU":
            table[name] = np.char.strip(np.asarray(table[name]).astype(str))
    return table


def read_cp_triplet(
    triplet: CpTriplet,
    hdu: str | None = None,
    psfex: str | os.PathLike[str] | None = None,
    zero_point: float | None = None,
) -> Exposure:
    """Read one CCD of a CP triplet into an Exposure.

    Parameters
    ----------
    triplet : CpTriplet
        The files, from :func:`group_cp_files`.
    hdu : str, optional
        The extension (EXTNAME, e.g. ``'S4'``) to read; ``triplet.extname`` by default.
    psfex : str or path-like, optional
        A PSFEx model file (classic or legacypipe merged) for this exposure; its model for this
        CCD becomes the PSF.
    zero_point : float, optional
        AB magnitude of one image unit per second (legacypipe ``ccdzpt``); gives the
        PhotoCalib ``zero_point + 2.5 log10(EXPTIME)``. CP headers carry no usable zero point,
        so without it ``photo_calib`` is None.

    Returns
    -------
    repo.exposure.Exposure
        Image (float32), mask (see :data:`CP_DQ_CODES`), variance (``1/weight``; ``inf`` and
        ``NO_DATA`` where ``weight <= 0``), the TPV WCS, PSF, calibration and header metadata.

    Raises
    ------
    repo.errors.DrpError
        Unreadable files, members that disagree (exposure, CCD or shape), or bad headers; the
        message names the file.
    """
    extname = hdu or triplet.extname
    image, primary, ext = _read_plane(triplet.image, extname, expect_float=True)
    weight, _, weight_ext = _read_plane(triplet.weight, extname, expect_float=True)
    dq, dq_primary, dq_ext = _read_plane(triplet.dq, extname, expect_float=False)
    for path, plane, header in ((triplet.weight, weight, weight_ext), (triplet.dq, dq, dq_ext)):
        if plane.shape != image.shape or header.get("CCDNUM") != ext.get("CCDNUM"):
            raise DrpError(
                f"{path}[{extname}]: shape {plane.shape} / CCDNUM {header.get('CCDNUM')} do not "
                f"match the image {triplet.image} ({image.shape}, CCDNUM {ext.get('CCDNUM')})"
            )
    info = _translate(DECam(), primary, ext, triplet.image)
    variance = variance_from_weight(weight)
    mask = mask_from_dq(dq, str(dq_primary.get("PLVER", primary.get("PLVER", ""))))
    no_data = (np.isinf(variance) | ~np.isfinite(image)).astype(np.int32) << _plane_bit("NO_DATA")
    mask |= no_data
    psf = None
    if psfex is not None:
        psf = PsfexPsf.from_file(
            psfex, ccdname=info["detector_record"]["name"], expnum=info["visit"]
        )
    photo_calib = None
    if zero_point is not None:
        exptime = info["visit_record"]["exposure_time"]
        photo_calib = PhotoCalib.from_zero_point(zero_point + 2.5 * math.log10(exptime))
    metadata = _metadata(primary, ext)
    metadata.update(
        {
            "CPIMAGE": os.path.basename(triplet.image),
            "CPWEIGHT": os.path.basename(triplet.weight),
            "CPDQ": os.path.basename(triplet.dq),
        }
    )
    return Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=_read_wcs(ext, triplet.image, extname),
        psf=psf,
        photo_calib=photo_calib,
        metadata=metadata,
    )


def _read_plane(
    path: str, extname: str, *, expect_float: bool
) -> tuple[np.ndarray, fits.Header, fits.Header]:
    with _open_fits(path) as hdul:
        _check_cp_primary(hdul[0].header, path)
        if extname not in hdul:
            raise DrpError(f"{path}: no extension {extname!r} (CCD) in this CP file")
        hdu = hdul[extname]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = hdu.data
        except (OSError, ValueError, TypeError) as exc:
            raise CorruptDatasetError(f"{path}[{extname}]: cannot read the pixels ({exc})") from exc
        if data is None or data.ndim != 2:
            raise DrpError(f"{path}[{extname}]: expected a 2-D image")
        if expect_float != (data.dtype.kind == "f"):
            raise DrpError(f"{path}[{extname}]: unexpected pixel type {data.dtype}")
        dtype = np.float32 if expect_float else np.int64
        return np.array(data, dtype=dtype), hdul[0].header.copy(), hdu.header.copy()


def _plane_bit(name: str) -> int:
    return DEFAULT_MASK_PLANES[name]


def variance_from_weight(weight: np.ndarray) -> np.ndarray:
    """``1 / weight`` in float32 where ``weight > 0``, ``+inf`` elsewhere (zero, negative, NaN)."""
    weight = np.asarray(weight, dtype=np.float32)
    variance = np.full(weight.shape, np.inf, dtype=np.float32)
    good = weight > 0
    np.divide(np.float32(1.0), weight, out=variance, where=good)
    return variance


def _uses_dq_codes(plver: str) -> bool:
    """CP versions from V3.5 on write integer codes in the ood files, earlier ones bit masks."""
    match = re.match(r"^V?(\d+)\.(\d+)", plver.strip())
    if not match:
        return True
    return (int(match[1]), int(match[2])) >= (3, 5)


def mask_from_dq(dq: np.ndarray, plver: str) -> np.ndarray:
    """The int32 mask (default planes) of a CP data-quality array.

    Parameters
    ----------
    dq : numpy.ndarray
        ood pixel values.
    plver : str
        CP version (``PLVER``): from V3.5 on the values are codes (:data:`CP_DQ_CODES`), before
        that bits (:data:`CP_DQ_BITS`). Unknown codes or bits set ``SUSPECT``.
    """
    dq = np.asarray(dq, dtype=np.int64)
    mask = np.zeros(dq.shape, dtype=np.int32)
    suspect = np.int32(1 << _plane_bit("SUSPECT"))
    if _uses_dq_codes(plver):
        for code, plane in CP_DQ_CODES.items():
            mask[dq == code] |= np.int32(1 << _plane_bit(plane))
        mask[(dq != 0) & ~np.isin(dq, list(CP_DQ_CODES))] |= suspect
    else:
        known = 0
        for bit, plane in CP_DQ_BITS.items():
            mask[(dq & bit) != 0] |= np.int32(1 << _plane_bit(plane))
            known |= bit
        mask[(dq & ~known) != 0] |= suspect
    return mask


def _read_wcs(ext: fits.Header, path: str, extname: str) -> WCS:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(ext)
    except Exception as exc:  # wcslib raises many types on malformed headers
        raise CorruptDatasetError(f"{path}[{extname}]: invalid WCS ({exc})") from exc
    if not wcs.has_celestial or wcs.naxis != 2:
        raise CorruptDatasetError(f"{path}[{extname}]: the header has no celestial 2-D WCS")
    return wcs


def _metadata(primary: fits.Header, ext: fits.Header) -> dict[str, bool | int | float | str]:
    metadata: dict[str, bool | int | float | str] = {}
    for header, keys in ((primary, _PRIMARY_METADATA), (ext, _EXTENSION_METADATA)):
        for key in keys:
            value = header.get(key)
            if isinstance(value, str):
                metadata[key] = value.strip()
            elif isinstance(value, bool | int | float):
                metadata[key] = value
    return metadata
