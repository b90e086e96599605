"""The survey plan: which exposures are taken when and where, and under what conditions.

Each night (epoch) observes every band once, in order, starting at a random hour angle between
-2.5 h and +2 h (daylight is ignored); the first night also starts with the calibration frames
(biases, darks, then flats per band). Science visits are dithered around the field centre
(uniformly within ``dither_fraction`` of the field radius) and rotated (uniform angle).

A :class:`Visit` carries its ``visit`` dimension record fields as observed (the *reported*
pointing and rotation, as in the raw headers) and its :class:`VisitConditions`: the truth that
never goes into a raw (true pointing, seeing, PSF parameters, extinction, sky, zero point).

Ids: exposure ``id = day_obs * 1000 + seq``, with ``seq`` counting a night's science exposures
from 1 and its calibration exposures from 501. ``day_obs`` is the UTC date 12 hours earlier.

Zero point: a source of ``f`` nJy gives ``f / njy_per_electron`` electrons in the exposure at
unit flat-field response, with ``njy_per_electron = 10**(-0.4 * (zero_point - 31.4))`` and
``zero_point = filter.zero_point + 2.5 log10(exposure_time) - extinction``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
from astropy.table import Table
from astropy.time import Time

from repo.errors import DrpError, InvalidDataIdError
from repo.instruments.simcam import (
    AB_NJY_ZERO_POINT,
    SimCam,
    dimension_record,
    inverse_gnomonic,
)

from .config import SurveyConfig, survey_rng

#: The observatory: latitude and east longitude (deg), elevation (m).
SITE_LATITUDE = -30.2446
SITE_LONGITUDE = -70.7494
SITE_ELEVATION = 2663.0
TARGET = "SIMFIELD"
#: Moffat indices of the atmospheric PSF, one drawn per visit (half-integers have closed-form
#: Fourier transforms, which keeps GalSim fast).
MOFFAT_BETAS = (3.5, 4.5)
#: Seconds between the starts of consecutive science exposures beyond the exposure time.
OVERHEAD_S = 45.0


@dataclass(frozen=True)
class VisitConditions:
    """Truth of one visit (never written into a raw).

    ``seeing`` is the atmospheric FWHM (arcsec) at the field centre for this band and airmass;
    the atmospheric PSF is a Moffat of index ``moffat_beta`` whose FWHM and ellipticity vary
    linearly over the focal plane: with ``u = X / R``, ``v = Y / R`` (R the field corner radius),
    ``fwhm = seeing * (1 + fwhm_gx * u + fwhm_gy * v)`` and
    ``e1 = psf_e1 + e1_gx * u + e1_gy * v`` (same for e2), in focal-plane axes.
    The sky is ``sky_level * (1 + sky_gx * u + sky_gy * v)`` electrons per pixel at unit flat
    response. The pointing error is reported minus true, on the sky (arcsec).
    """

    seeing: float
    moffat_beta: float
    fwhm_gx: float
    fwhm_gy: float
    psf_e1: float
    psf_e2: float
    e1_gx: float
    e1_gy: float
    e2_gx: float
    e2_gy: float
    cloud: float
    extinction: float
    sky_mag: float
    sky_level: float
    sky_gx: float
    sky_gy: float
    zero_point: float
    njy_per_electron: float
    true_ra: float
    true_dec: float
    true_rotation: float
    pointing_error_ra: float
    pointing_error_dec: float
    rotation_error: float


@dataclass(frozen=True)
class Visit:
    """One science exposure: its ``visit`` record fields (as reported) and its truth."""

    id: int
    physical_filter: str
    band: str
    day_obs: int
    seq: int
    epoch: int
    exposure_time: float
    ra: float
    dec: float
    rotation_angle: float
    datetime_begin: str
    mjd: float
    airmass: float
    zenith_distance: float
    target: str
    conditions: VisitConditions

    @property
    def mjd_mid(self) -> float:
        """MJD of the middle of the exposure."""
        return self.mjd + 0.5 * self.exposure_time / 86400.0


@dataclass(frozen=True)
class CalibrationExposure:
    """One calibration exposure: a bias, dark or flat.

    ``physical_filter`` and ``band`` name the filter in the beam: the flat's band for a flat, the
    first survey band for biases and darks (whose shutter stays closed).
    """

    id: int
    kind: str
    physical_filter: str
    band: str
    index: int
    day_obs: int
    seq: int
    exposure_time: float
    datetime_begin: str
    mjd: float


@dataclass(frozen=True)
class SurveyPlan:
    """The survey: configuration, camera, science visits and calibration exposures."""

    config: SurveyConfig
    camera: SimCam
    visits: tuple[Visit, ...]
    calibrations: tuple[CalibrationExposure, ...]

    def visit(self, visit_id: int) -> Visit:
        """The visit with this id; an unknown id raises :class:`InvalidDataIdError`."""
        for visit in self.visits:
            if visit.id == int(visit_id):
                return visit
        raise InvalidDataIdError(f"visit {visit_id} is not in the survey plan")

    def calibration(
        self, kind: str, band: str | None = None, index: int = 0
    ) -> CalibrationExposure:
        """The calibration exposure of a kind (and band, for flats) and index."""
        if kind not in ("bias", "dark", "flat"):
            raise DrpError(f"unknown calibration kind {kind!r} (bias, dark, flat)")
        if kind == "flat" and band not in self.config.bands:
            raise DrpError(f"flats exist for bands {self.config.bands}, not {band!r}")
        for cal in self.calibrations:
            if cal.kind == kind and cal.index == index and (kind != "flat" or cal.band == band):
                return cal
        raise DrpError(f"no {kind} with index {index} in the survey plan")

    @property
    def field_radius_arcsec(self) -> float:
        """Radius around the field centre that every visit's detectors fall within (arcsec)."""
        return self.camera.field_radius_arcsec * (1.0 + self.config.dither_fraction)

    def visit_records(self) -> list[dict]:
        """``visit`` dimension records of the science visits, as ingest makes them from raws.

        The pointing is the reported one; the region is the camera footprint.
        """
        records = []
        for v in self.visits:
            footprint = self.camera.footprint(v.ra, v.dec, v.rotation_angle)
            values = {
                "instrument": self.camera.name,
                "id": v.id,
                "physical_filter": v.physical_filter,
                "band": v.band,
                "day_obs": v.day_obs,
                "exposure_time": v.exposure_time,
                "ra": v.ra,
                "dec": v.dec,
                "rotation_angle": v.rotation_angle,
                "datetime_begin": v.datetime_begin,
                "mjd": v.mjd,
                "airmass": v.airmass,
                "target": v.target,
                "observation_type": "science",
                "region": json.dumps([list(p) for p in footprint]),
            }
            records.append(dimension_record("visit", values))
        return records

    def calibration_records(self) -> list[dict]:
        """``visit`` records of the calibration exposures (no pointing, airmass or region)."""
        records = []
        for cal in self.calibrations:
            values = {
                "instrument": self.camera.name,
                "id": cal.id,
                "physical_filter": cal.physical_filter,
                "band": cal.band,
                "day_obs": cal.day_obs,
                "exposure_time": cal.exposure_time,
                "datetime_begin": cal.datetime_begin,
                "mjd": cal.mjd,
                "target": cal.kind,
                "observation_type": cal.kind,
            }
            records.append(dimension_record("visit", values))
        return records

    def day_obs_records(self) -> list[dict]:
        """``day_obs`` dimension records of every night with an exposure."""
        nights = sorted({v.day_obs for v in self.visits} | {c.day_obs for c in self.calibrations})
        return [{"instrument": self.camera.name, "id": night} for night in nights]

    def conditions_table(self) -> Table:
        """One row per visit: id, band, mjd, airmass and every :class:`VisitConditions` field."""
        rows = []
        for v in self.visits:
            row = {"visit": v.id, "band": v.band, "mjd": v.mjd, "airmass": v.airmass}
            row.update(asdict(v.conditions))
            rows.append(row)
        return Table(rows=rows)


def _iso(mjd: float) -> str:
    return Time(mjd, format="mjd", scale="utc", precision=3).isot


def _day_obs(mjd: float) -> int:
    return int(Time(mjd - 0.5, format="mjd", scale="utc").strftime("%Y%m%d"))


def local_sidereal_time(mjd: float) -> float:
    """Local mean sidereal time (deg) at the site for a UTC MJD (IAU 1982, no UT1 correction)."""
    gmst = 280.46061837 + 360.98564736629 * (mjd - 51544.5)
    return (gmst + SITE_LONGITUDE) % 360.0


def zenith_distance(mjd: float, ra: float, dec: float) -> float:
    """Zenith distance (deg) of (ra, dec) at the site at a UTC MJD."""
    ha = math.radians(local_sidereal_time(mjd) - ra)
    lat, d = math.radians(SITE_LATITUDE), math.radians(dec)
    cos_z = math.sin(lat) * math.sin(d) + math.cos(lat) * math.cos(d) * math.cos(ha)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos_z))))


def make_plan(config: SurveyConfig) -> SurveyPlan:
    """The survey plan of a configuration: visits with their truth, and calibration exposures.

    Parameters
    ----------
    config : SurveyConfig
        The survey.

    Returns
    -------
    SurveyPlan
        Visits ordered by time (night by night, bands in ``config.bands`` order).
    """
    if abs(config.dec - SITE_LATITUDE) > 70.0:
        raise DrpError(
            f"field at dec={config.dec} never rises above airmass 3 at the site "
            f"(latitude {SITE_LATITUDE})"
        )
    camera = config.camera()
    rng = survey_rng(config.seed, "schedule")
    evening = Time(f"{config.start_date}T23:00:00", scale="utc").mjd
    night_starts = evening + np.concatenate(
        [[0], np.cumsum(rng.integers(2, 7, size=config.n_epochs - 1))]
    )
    visits = []
    for epoch, night in enumerate(night_starts):
        hour_angle = rng.uniform(-2.5, 2.0) * 15.0
        delta = (config.ra + hour_angle - local_sidereal_time(night)) % 360.0
        start = night + delta / 360.98564736629
        for k, band in enumerate(config.bands):
            mjd = float(start + k * (config.exposure_time + OVERHEAD_S) / 86400.0)
            visits.append(_make_visit(config, camera, epoch, k + 1, band, mjd))
    calibrations = _make_calibrations(
        config, camera, evening - 4.0 / 24.0, _day_obs(night_starts[0])
    )
    return SurveyPlan(config, camera, tuple(visits), calibrations)


def _make_visit(
    config: SurveyConfig, camera: SimCam, epoch: int, seq: int, band: str, mjd: float
) -> Visit:
    filt = camera.filter(band)
    day_obs = _day_obs(mjd)
    visit_id = day_obs * 1000 + seq
    rng = survey_rng(config.seed, "visit", visit_id)
    # Reported pointing: dithered around the field centre.
    radius = config.dither_fraction * camera.field_radius_arcsec / 3600.0
    r, phi = radius * math.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * math.pi)
    ra, dec = inverse_gnomonic(r * math.cos(phi), r * math.sin(phi), config.ra, config.dec)
    ra, dec = float(ra), float(dec)
    rotation = float(rng.uniform(0.0, 360.0))
    err_ra, err_dec = rng.normal(0.0, config.pointing_error_arcsec, 2)
    err_rot = float(rng.normal(0.0, 0.005))
    true_dec = dec - err_dec / 3600.0
    true_ra = (ra - err_ra / 3600.0 / math.cos(math.radians(true_dec))) % 360.0
    zd = zenith_distance(mjd, ra, dec)
    airmass = 1.0 / math.cos(math.radians(zd))
    # Atmosphere.
    zenith_seeing_r = float(np.clip(rng.lognormal(math.log(0.7), 0.2), 0.45, 1.2))
    seeing = zenith_seeing_r * airmass**0.6 * (filt.wavelength_nm / 623.0) ** -0.2
    cloud = float(rng.exponential(0.02)) if rng.uniform() < 0.3 else 0.0
    extinction = filt.extinction * airmass + cloud
    sky_mag = filt.sky_mag - float(rng.exponential(0.3))
    pixel_area = camera.config.pixel_scale_arcsec**2
    sky_level = 10 ** (-0.4 * (sky_mag - filt.zero_point)) * pixel_area * config.exposure_time
    zero_point = filt.zero_point + 2.5 * math.log10(config.exposure_time) - extinction
    grads = rng.normal(0.0, [0.02, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.01])
    conditions = VisitConditions(
        seeing=seeing,
        moffat_beta=float(rng.choice(MOFFAT_BETAS)),
        fwhm_gx=float(grads[0]),
        fwhm_gy=float(grads[1]),
        psf_e1=float(rng.normal(0.0, 0.02)),
        psf_e2=float(rng.normal(0.0, 0.02)),
        e1_gx=float(grads[4]),
        e1_gy=float(grads[5]),
        e2_gx=float(grads[6]),
        e2_gy=float(grads[7]),
        cloud=cloud,
        extinction=extinction,
        sky_mag=sky_mag,
        sky_level=sky_level,
        sky_gx=float(grads[2]),
        sky_gy=float(grads[3]),
        zero_point=zero_point,
        njy_per_electron=10 ** (-0.4 * (zero_point - AB_NJY_ZERO_POINT)),
        true_ra=true_ra,
        true_dec=true_dec,
        true_rotation=(rotation - err_rot) % 360.0,
        pointing_error_ra=float(err_ra),
        pointing_error_dec=float(err_dec),
        rotation_error=err_rot,
    )
    return Visit(
        id=visit_id,
        physical_filter=filt.name,
        band=band,
        day_obs=day_obs,
        seq=seq,
        epoch=epoch,
        exposure_time=config.exposure_time,
        ra=ra,
        dec=dec,
        rotation_angle=rotation,
        datetime_begin=_iso(mjd),
        mjd=mjd,
        airmass=airmass,
        zenith_distance=zd,
        target=TARGET,
        conditions=conditions,
    )


def _make_calibrations(
    config: SurveyConfig, camera: SimCam, start: float, day_obs: int
) -> tuple[CalibrationExposure, ...]:
    first = config.bands[0]
    kinds: list[tuple[str, str, int, float]] = []
    kinds += [("bias", first, i, 0.0) for i in range(config.n_bias)]
    kinds += [("dark", first, i, config.dark_time) for i in range(config.n_dark)]
    kinds += [("flat", b, i, 5.0) for b in config.bands for i in range(config.n_flat)]
    out = []
    mjd = float(start)
    for n, (kind, band, index, exptime) in enumerate(kinds):
        seq = 501 + n
        out.append(
            CalibrationExposure(
                id=day_obs * 1000 + seq,
                kind=kind,
                physical_filter=camera.filter(band).name,
                band=band,
                index=index,
                day_obs=day_obs,
                seq=seq,
                exposure_time=exptime,
                datetime_begin=_iso(mjd),
                mjd=mjd,
            )
        )
        mjd += (exptime + 30.0) / 86400.0
    return tuple(out)
