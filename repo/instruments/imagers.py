"""Calibrated single images of other surveys: 2MASS atlas tiles, SDSS frames, Spitzer mosaics.

Each of these files is one already-calibrated image with a celestial WCS; ingest makes it an
``image`` Exposure whose :class:`repo.exposure.PhotoCalib` comes from the file's own calibration,
converted to nanojansky (AB):

* 2MASS atlas images (``ORIGIN = '2MASS'``): data numbers with the zero point ``MAGZP``, a Vega
  magnitude; 2MASS's Vega-to-AB offsets (J 0.91, H 1.39, Ks 1.85; Blanton & Roweis 2007) make
  it AB.
* SDSS corrected frames (``TELESCOP = '2.5m'``, ``BUNIT = 'nanomaggy'``): 1 nanomaggy is 3631 nJy
  (AB mag 22.5).
* Spitzer mosaics (``TELESCOP = 'Spitzer'``, ``BUNIT = 'MJy/sr'``): surface brightness; one unit is
  ``1e15 * pixel solid angle`` nJy per pixel. Their WCS may be Galactic: the footprints stored
  in the registry are converted to ICRS, the WCS is kept as it is.

The variance is the sky noise of the image (the header's ``SKYSIG`` when it has one, else a
robust sigma of its pixels, 3-sigma clipped, which nebulosity raises), plus the Poisson term of the sources when the header gives a gain; ``NO_DATA`` marks
non-finite pixels, ``SAT`` those at or above ``SATURATE`` when given. One file is one visit of
detector 0; the visit id is built from the survey's own identifiers (2MASS: date, scan and
frame of the file name; SDSS: run, camcol, field and band; Spitzer: ``AORKEY`` or the file
name's digits).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_area

from ..errors import CorruptDatasetError, DimensionRecordError, DrpError, StorageError
from ..exposure import DEFAULT_MASK_PLANES, Exposure, PhotoCalib
from .base import IngestItem, Instrument

IMAGE_DATASET_TYPE = "image"
#: 2MASS Vega-to-AB offsets (m_AB - m_Vega), Blanton & Roweis (2007).
TWOMASS_AB_OFFSETS = {"J": 0.91, "H": 1.39, "Ks": 1.85}
#: nJy of one SDSS nanomaggy (AB 22.5).
NANOMAGGY_NJY = 3631.0
#: The headers' values copied into the Exposure metadata, when present.
_METADATA_KEYS = ("ORIGIN", "TELESCOP", "INSTRUME", "FILTER", "BUNIT", "MAGZP", "EXPTIME", "GAIN",
                  "SATURATE", "SKYVAL", "SKYSIG", "SEESH", "AIRMASS", "MJD-OBS", "DATE-OBS")  # fmt: skip


class CalibratedImager(Instrument):
    """An instrument whose files are calibrated images, one per visit (see the module).

    Subclasses set ``name``, ``bands`` and implement :meth:`band_of`, :meth:`visit_id`,
    :meth:`calibration`, :meth:`start_time`.
    """

    bands: ClassVar[tuple[str, ...]]

    def physical_filter_records(self) -> list[dict[str, Any]]:
        return [
            {"instrument": self.name, "name": f"{self.name}-{b}", "band": b} for b in self.bands
        ]

    def detector_records(self) -> list[dict[str, Any]]:
        """One detector, 0; its size varies from file to file (0: not fixed)."""
        return [
            {
                "instrument": self.name,
                "id": 0,
                "name": "image",
                "nx": 0,
                "ny": 0,
                "focal_plane_x": 0.0,
                "focal_plane_y": 0.0,
                "orientation": 0.0,
                "pixel_size": 0.0,
            }
        ]

    def band_of(self, path: str, header: fits.Header) -> str:
        raise NotImplementedError

    def visit_id(self, path: str, header: fits.Header, band: str) -> int:
        raise NotImplementedError

    def calibration(self, header: fits.Header, wcs: WCS, band: str, path: str) -> PhotoCalib:
        raise NotImplementedError

    def start_time(self, header: fits.Header, path: str) -> Time:
        """Start of the observation (``MJD-OBS`` or ``DATE-OBS``)."""
        if "MJD-OBS" in header:
            return Time(float(header["MJD-OBS"]), format="mjd", scale="utc")
        if "DATE-OBS" in header:
            return Time(str(header["DATE-OBS"]).strip(), scale="utc")
        raise DimensionRecordError(f"{path}: no MJD-OBS or DATE-OBS in the header")

    def ingest_items(self, paths: Sequence[str]) -> list[IngestItem]:
        """One ``image`` Exposure per file, with its visit and footprint records."""
        items = []
        for path in paths:
            header, shape = _primary_header(path)
            wcs = _celestial_wcs(header, path)
            band = self.band_of(path, header)
            visit = self.visit_id(path, header, band)
            start = self.start_time(header, path)
            corners = _footprint_icrs(wcs, shape)
            centre = _centre_icrs(wcs, shape)
            day_obs = int(start.strftime("%Y%m%d"))
            visit_record = {
                "instrument": self.name,
                "id": visit,
                "physical_filter": f"{self.name}-{band}",
                "band": band,
                "day_obs": day_obs,
                "exposure_time": float(header.get("EXPTIME", 0.0)),
                "ra": centre[0],
                "dec": centre[1],
                "rotation_angle": 0.0,
                "datetime_begin": start.isot,
                "mjd": float(start.mjd),
                "airmass": float(header.get("AIRMASS", header.get("AMASS_FC", 0.0))),
                "target": str(header.get("OBJECT", "")).strip(),
                "observation_type": "science",
                "region": json.dumps(corners),
            }
            items.append(
                IngestItem(
                    dataset_type=IMAGE_DATASET_TYPE,
                    dimensions=("instrument", "visit", "detector"),
                    storage_class="Exposure",
                    data_id={"instrument": self.name, "visit": visit, "detector": 0},
                    records={
                        "day_obs": [{"instrument": self.name, "id": day_obs}],
                        "visit": [visit_record],
                        "visit_detector_region": [
                            {
                                "instrument": self.name,
                                "visit": visit,
                                "detector": 0,
                                "region": json.dumps(corners),
                            }
                        ],
                    },
                    make=partial(read_calibrated_image, self, path),
                    sources=(path,),
                )
            )
        return items


class TwoMass(CalibratedImager):
    """2MASS atlas images (``aJ_asky_...``, ``aH_``, ``aK_``): DN with a Vega ``MAGZP``."""

    name = "2MASS"
    bands = ("J", "H", "Ks")
    _NAME = re.compile(
        r"^a(?P<band>[JHK])_asky_(?P<date>\d{6})(?P<hemi>[ns])(?P<scan>\d{3})(?P<frame>\d{4})"
    )

    @classmethod
    def matches_header(cls, header: Mapping[str, Any]) -> bool:
        return str(header.get("ORIGIN", "")).strip() == "2MASS"

    def band_of(self, path: str, header: fits.Header) -> str:
        value = str(header.get("FILTER", "")).strip().lower()
        band = {"j": "J", "h": "H", "k": "Ks", "ks": "Ks"}.get(value)
        if band is None:
            raise DimensionRecordError(f"{path}: unknown 2MASS FILTER {value!r} (j, h, k)")
        return band

    def visit_id(self, path: str, header: fits.Header, band: str) -> int:
        """``<yymmdd><hemisphere 0 n, 1 s><scan><frame>``, e.g. 99050211350080."""
        match = self._NAME.match(os.path.basename(path))
        if not match:
            raise DimensionRecordError(
                f"{path}: not a 2MASS atlas file name (a[JHK]_asky_<yymmdd><n|s><scan><frame>)"
            )
        hemisphere = "1" if match["hemi"] == "s" else "0"
        return int(f"{match['date']}{hemisphere}{match['scan']}{match['frame']}")

    def start_time(self, header: fits.Header, path: str) -> Time:
        date, ut = str(header.get("UT_DATE", "")).strip(), str(header.get("UT", "")).strip()
        if not (re.fullmatch(r"\d{6}", date) and ut):
            raise DimensionRecordError(f"{path}: no UT_DATE/UT in the 2MASS header")
        year = 1900 + int(date[:2]) if int(date[:2]) > 90 else 2000 + int(date[:2])
        return Time(f"{year}-{date[2:4]}-{date[4:6]}T{ut}", scale="utc")

    def calibration(self, header: fits.Header, wcs: WCS, band: str, path: str) -> PhotoCalib:
        if "MAGZP" not in header:
            raise DrpError(f"{path}: a 2MASS image without MAGZP cannot be calibrated")
        zero_point_ab = float(header["MAGZP"]) + TWOMASS_AB_OFFSETS[band]
        return PhotoCalib.from_zero_point(zero_point_ab)


class Sdss(CalibratedImager):
    """SDSS corrected frames (``frame-<band>-<run>-<camcol>-<field>.fits``) in nanomaggies."""

    name = "SDSS"
    bands = ("u", "g", "r", "i", "z")

    @classmethod
    def matches_header(cls, header: Mapping[str, Any]) -> bool:
        return str(header.get("TELESCOP", "")).strip() == "2.5m" and "RUN" in header

    def band_of(self, path: str, header: fits.Header) -> str:
        band = str(header.get("FILTER", "")).strip()
        if band not in self.bands:
            raise DimensionRecordError(f"{path}: unknown SDSS FILTER {band!r} (u, g, r, i, z)")
        return band

    def visit_id(self, path: str, header: fits.Header, band: str) -> int:
        """``((run * 10 + camcol) * 10000 + field) * 10 + band index``."""
        try:
            run, camcol, field = (int(header[k]) for k in ("RUN", "CAMCOL", "FRAME"))
        except (KeyError, ValueError):
            raise DimensionRecordError(f"{path}: SDSS frame without RUN/CAMCOL/FRAME") from None
        return ((run * 10 + camcol) * 10000 + field) * 10 + self.bands.index(band)

    def start_time(self, header: fits.Header, path: str) -> Time:
        if "TAI" in header:  # SDSS: TAI seconds of the MJD
            return Time(float(header["TAI"]) / 86400.0, format="mjd", scale="tai").utc
        return super().start_time(header, path)

    def calibration(self, header: fits.Header, wcs: WCS, band: str, path: str) -> PhotoCalib:
        unit = str(header.get("BUNIT", "")).strip().lower()
        if unit not in ("nanomaggy", "nanomaggies", "nmgy"):
            raise DrpError(f"{path}: SDSS frame in BUNIT {unit!r}, expected nanomaggy")
        return PhotoCalib(NANOMAGGY_NJY)


class Spitzer(CalibratedImager):
    """Spitzer IRAC and MIPS mosaics in MJy/sr (possibly with a Galactic WCS)."""

    name = "Spitzer"
    bands = ("I1", "I2", "I3", "I4", "M1", "M2", "M3")
    _BAND_BY_WAVELENGTH = {3.6: "I1", 4.5: "I2", 5.8: "I3", 8.0: "I4", 24.0: "M1", 70.0: "M2",
                           160.0: "M3"}  # fmt: skip

    @classmethod
    def matches_header(cls, header: Mapping[str, Any]) -> bool:
        return str(header.get("TELESCOP", "")).strip().lower() == "spitzer"

    def band_of(self, path: str, header: fits.Header) -> str:
        channel = header.get("CHNLNUM")
        if str(header.get("INSTRUME", "")).strip().upper() == "IRAC" and channel in (1, 2, 3, 4):
            return f"I{channel}"
        wavelength = header.get("WAVELEN")
        for known, band in self._BAND_BY_WAVELENGTH.items():
            if (
                isinstance(wavelength, int | float)
                and abs(float(wavelength) - known) < 0.05 * known
            ):
                return band
        raise DimensionRecordError(f"{path}: cannot tell the Spitzer band (CHNLNUM or WAVELEN)")

    def visit_id(self, path: str, header: fits.Header, band: str) -> int:
        if isinstance(header.get("AORKEY"), int):
            return int(header["AORKEY"]) * 10 + self.bands.index(band) % 10
        digits = re.sub(r"\D", "", os.path.basename(path))
        if not digits:
            raise DimensionRecordError(f"{path}: no AORKEY and no digits in the file name")
        return int(digits[-15:]) * 10 + self.bands.index(band) % 10

    def calibration(self, header: fits.Header, wcs: WCS, band: str, path: str) -> PhotoCalib:
        unit = str(header.get("BUNIT", "")).strip().replace(" ", "").lower()
        if unit != "mjy/sr":
            raise DrpError(f"{path}: Spitzer image in BUNIT {unit!r}, expected MJy/sr")
        steradians = float(proj_plane_pixel_area(wcs.celestial)) * (math.pi / 180.0) ** 2
        return PhotoCalib(1e15 * steradians)  # MJy/sr * sr = 1e6 Jy = 1e15 nJy


def read_calibrated_image(instrument: CalibratedImager, path: str) -> Exposure:
    """Read one calibrated image file into an Exposure (see the module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            with fits.open(path, memmap=False) as hdul:
                hdul.verify("silentfix")
                header, data = hdul[0].header.copy(), hdul[0].data
    except FileNotFoundError:
        raise StorageError(f"{path}: no such file") from None
    except Exception as exc:
        raise CorruptDatasetError(f"{path}: not a readable FITS image ({exc})") from exc
    if data is None or data.ndim != 2:
        raise DrpError(f"{path}: the primary HDU holds no 2-d image")
    image = np.asarray(data, dtype=np.float32)
    wcs = _celestial_wcs(header, path)
    band = instrument.band_of(path, header)
    finite = np.isfinite(image)
    if not finite.any():
        raise DrpError(f"{path}: no finite pixel")
    _, median, sigma = sigma_clipped_stats(image[finite], sigma=3.0, maxiters=5)
    skysig = header.get("SKYSIG")  # the survey's own sky noise (2MASS), better in a nebula
    if isinstance(skysig, int | float) and math.isfinite(skysig) and skysig > 0:
        sigma = float(skysig)
    variance = np.full(image.shape, float(sigma) ** 2, np.float32)
    gain = header.get("GAIN")
    if isinstance(gain, int | float) and gain > 0:
        variance += np.clip(image - float(median), 0, None) / float(gain)
    mask = np.zeros(image.shape, np.int32)
    mask[~finite] |= 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    variance[~finite] = np.inf
    image[~finite] = 0.0
    saturate = header.get("SATURATE")
    if isinstance(saturate, int | float):
        mask[image >= float(saturate)] |= 1 << DEFAULT_MASK_PLANES["SAT"]
    metadata: dict[str, bool | int | float | str] = {}
    for key in _METADATA_KEYS:
        value = header.get(key)
        if isinstance(value, str):
            metadata[key] = value.strip()
        elif isinstance(value, bool | int | float):
            metadata[key] = value
    start = instrument.start_time(header, path)
    metadata.update({"MJD-OBS": float(start.mjd), "IMGFILE": os.path.basename(path),
                     "SKYSIGMA": float(sigma), "BAND": band})  # fmt: skip
    return Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=wcs,
        photo_calib=instrument.calibration(header, wcs, band, path),
        metadata=metadata,
    )


def _primary_header(path: str) -> tuple[fits.Header, tuple[int, int]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = fits.getheader(path, 0)
    except FileNotFoundError:
        raise StorageError(f"{path}: no such file") from None
    except Exception as exc:
        raise CorruptDatasetError(f"{path}: not a readable FITS file ({exc})") from exc
    if header.get("NAXIS") != 2:
        raise DrpError(f"{path}: the primary HDU is not a 2-d image (NAXIS={header.get('NAXIS')})")
    return header, (int(header["NAXIS2"]), int(header["NAXIS1"]))


def _celestial_wcs(header: fits.Header, path: str) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception as exc:
            raise DrpError(f"{path}: the header's WCS cannot be read ({exc})") from exc
    if not wcs.has_celestial or wcs.naxis != 2:
        raise DrpError(f"{path}: the header has no 2-d celestial WCS (CTYPE {wcs.wcs.ctype})")
    return wcs


def _sky(wcs: WCS, x: np.ndarray, y: np.ndarray) -> SkyCoord:
    """ICRS positions of pixels, whatever the WCS's frame (Galactic included)."""
    from astropy.wcs.utils import pixel_to_skycoord

    return pixel_to_skycoord(x, y, wcs, origin=0).icrs


def _footprint_icrs(wcs: WCS, shape: tuple[int, int]) -> list[list[float]]:
    ny, nx = shape
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    sky = _sky(wcs, x, y)
    return [[float(r), float(d)] for r, d in zip(sky.ra.deg, sky.dec.deg, strict=True)]


def _centre_icrs(wcs: WCS, shape: tuple[int, int]) -> tuple[float, float]:
    ny, nx = shape
    sky = _sky(wcs, np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0]))
    return float(sky.ra.deg[0]), float(sky.dec.deg[0])
