"""The simulated sky: stars (some variable), galaxies, transients and asteroids, with truth.

Every table here is truth, fixed by the survey seed; :func:`make_sky` builds them all, and the
reference catalog (:attr:`SkyModel.refcat`) is what a Gaia-like survey would have measured of the
stars. Magnitudes are AB in the SimCam bands (g, r, i); fluxes are in nJy
(``mag = 31.4 - 2.5 log10(flux)``).

Stars (:attr:`SkyModel.stars`)
    ``id``, ``ra``, ``dec`` (deg, ICRS, at the reference epoch J2016.0), ``pm_ra`` (mu_alpha*,
    includes cos dec) and ``pm_dec`` (mas/yr), ``mag_g``, ``mag_r``, ``mag_i`` (mean), and the
    periodic variability of the variable ones: ``is_variable``, ``var_period`` (days),
    ``var_amplitude_g/r/i`` (peak-to-peak mag), ``var_mjd0`` (MJD of maximum light). The light
    curve is RR Lyrae-like: in phase ``p`` (0 at maximum) the magnitude offset is
    ``A (p / 0.85 - 0.5)`` for ``p < 0.85`` (slow decline) and ``A (0.5 - (p - 0.85) / 0.15)``
    after (fast rise).
    r magnitudes follow dN/dm ~ 10^(0.15 m) over 14.5-23.5; g-r is drawn from a turn-off plus
    K/M-dwarf mixture and r-i follows the stellar locus; proper motions scatter 8 mas/yr around
    (3, -5) mas/yr, with 2% high-proper-motion stars (100 mas/yr rms).
Galaxies (:attr:`SkyModel.galaxies`)
    Bulge (de Vaucouleurs) + disk (exponential): ``id``, ``ra``, ``dec``, ``mag_g/r/i`` (total),
    ``bulge_fraction_g/r/i`` (B/T flux ratio in each band; bulges are redder than disks),
    ``disk_hlr`` and ``bulge_hlr`` (half-light radii, arcsec), ``disk_e1``, ``disk_e2``,
    ``bulge_e1``, ``bulge_e2`` (distortions in the sky frame whose +x is west and +y north, i.e.
    the pixel frame of a north-up, east-left image), ``position_angle`` (deg east of north of the
    common major axis). r magnitudes follow dN/dm ~ 10^(0.33 m) over 18-24.5.
Transients (:attr:`SkyModel.transients`)
    Supernova-like, near a host galaxy: ``id``, ``ra``, ``dec``, ``host_id``, ``t0`` (MJD),
    ``tau_rise`` (days), ``tau_fall_g/r/i`` (days), ``peak_mag_g/r/i``. The flux is a Bazin curve
    ``A exp(-(t - t0) / tau_fall) / (1 + exp(-(t - t0) / tau_rise))`` scaled to the peak
    magnitude, and zero before ``t0 - 10 tau_rise``.
Asteroids (:attr:`SkyModel.asteroids`)
    One per night, moving linearly on the tangent plane of the field centre: ``id``, ``mjd_ref``,
    ``ra``, ``dec`` (deg, at ``mjd_ref``), ``rate_ra`` (towards east) and ``rate_dec`` (arcsec
    per hour), ``mag_g/r/i``.
Reference catalog (:attr:`SkyModel.refcat`)
    See :data:`REFCAT_COLUMNS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from repo.errors import DrpError
from repo.instruments.simcam import AB_NJY_ZERO_POINT, gnomonic, inverse_gnomonic

from .config import SurveyConfig, survey_rng
from .plan import SurveyPlan, make_plan

#: Reference epoch of the star positions and of the reference catalog (Julian year and MJD).
REFERENCE_EPOCH = 2016.0
REFERENCE_MJD = 57388.5
#: Faint limit (r) of the reference catalog.
REFCAT_MAG_LIMIT = 21.0
#: Id offsets of the source kinds (ids are unique across kinds).
STAR_ID0, GALAXY_ID0, TRANSIENT_ID0, ASTEROID_ID0 = 1, 1_000_001, 2_000_001, 3_000_001

#: Columns of the reference catalog: name -> (unit, description).
REFCAT_COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("", "source id (the star's truth id)"),
    "ra": ("deg", "right ascension at the catalog epoch (ICRS)"),
    "dec": ("deg", "declination at the catalog epoch (ICRS)"),
    "ra_err": ("mas", "uncertainty of ra (on the sky, i.e. times cos dec)"),
    "dec_err": ("mas", "uncertainty of dec"),
    "pm_ra": ("mas/yr", "proper motion in right ascension, mu_alpha* (includes cos dec)"),
    "pm_dec": ("mas/yr", "proper motion in declination"),
    "pm_ra_err": ("mas/yr", "uncertainty of pm_ra"),
    "pm_dec_err": ("mas/yr", "uncertainty of pm_dec"),
    "epoch": ("yr", "epoch of ra, dec (Julian year)"),
    "phot_g_mag": ("mag", "mean AB magnitude in g"),
    "phot_g_mag_err": ("mag", "uncertainty of phot_g_mag"),
    "phot_r_mag": ("mag", "mean AB magnitude in r"),
    "phot_r_mag_err": ("mag", "uncertainty of phot_r_mag"),
    "phot_i_mag": ("mag", "mean AB magnitude in i"),
    "phot_i_mag_err": ("mag", "uncertainty of phot_i_mag"),
    "g_flux": ("nJy", "mean flux in g"),
    "g_fluxErr": ("nJy", "uncertainty of g_flux"),
    "r_flux": ("nJy", "mean flux in r"),
    "r_fluxErr": ("nJy", "uncertainty of r_flux"),
    "i_flux": ("nJy", "mean flux in i"),
    "i_fluxErr": ("nJy", "uncertainty of i_flux"),
    "phot_variable_flag": ("", "True for known variable stars"),
}

_BANDS = ("g", "r", "i")
_LOCUS_GR = np.array([0.0, 0.3, 0.6, 0.9, 1.2, 1.35, 1.45, 1.5])
_LOCUS_RI = np.array([-0.05, 0.07, 0.19, 0.32, 0.52, 0.75, 1.05, 1.35])


@dataclass(frozen=True)
class SkyModel:
    """The truth of the simulated sky (see the module docstring for the columns)."""

    stars: Table
    galaxies: Table
    transients: Table
    asteroids: Table
    refcat: Table
    ra: float
    dec: float
    radius_arcsec: float


def mag_to_njy(mag: np.ndarray | float) -> np.ndarray:
    """AB magnitude to flux in nJy."""
    return 10 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_NJY_ZERO_POINT))


def _sample_power_law(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float):
    """Magnitudes with dN/dm ~ 10^(slope m) on [lo, hi]."""
    a = slope * math.log(10.0)
    u = rng.uniform(size=n)
    return np.log(np.exp(a * lo) + u * (np.exp(a * hi) - np.exp(a * lo))) / a


def _sample_disk(rng: np.random.Generator, n: int, radius_deg: float, ra: float, dec: float):
    r = radius_deg * np.sqrt(rng.uniform(size=n))
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    return inverse_gnomonic(r * np.cos(phi), r * np.sin(phi), ra, dec)


def make_sky(config: SurveyConfig, plan: SurveyPlan | None = None) -> SkyModel:
    """The sky of a survey: stars, galaxies, transients, asteroids and the reference catalog.

    Parameters
    ----------
    config : SurveyConfig
        The survey (its seed fixes the sky).
    plan : SurveyPlan, optional
        The survey plan (made from ``config`` if not given): transients peak and asteroids cross
        during the survey.

    Returns
    -------
    SkyModel
        The truth tables and the reference catalog.
    """
    plan = plan or make_plan(config)
    radius = plan.field_radius_arcsec + 10.0
    area_arcmin2 = math.pi * (radius / 60.0) ** 2
    stars = _make_stars(config, radius, area_arcmin2)
    galaxies = _make_galaxies(config, radius, area_arcmin2)
    transients = _make_transients(config, plan, galaxies)
    asteroids = _make_asteroids(config, plan)
    refcat = _make_refcat(config, stars)
    return SkyModel(stars, galaxies, transients, asteroids, refcat, config.ra, config.dec, radius)


def _make_stars(config: SurveyConfig, radius: float, area: float) -> Table:
    rng = survey_rng(config.seed, "stars")
    n = int(rng.poisson(config.star_density * area))
    ra, dec = _sample_disk(rng, n, radius / 3600.0, config.ra, config.dec)
    mag_r = _sample_power_law(rng, n, 14.5, 23.5, 0.15)
    turnoff = rng.uniform(size=n) < 0.6
    g_r = np.where(turnoff, rng.normal(0.45, 0.12, n), rng.uniform(0.6, 1.45, n))
    g_r = np.clip(g_r, 0.1, 1.5)
    r_i = np.interp(g_r, _LOCUS_GR, _LOCUS_RI) + rng.normal(0.0, 0.02, n)
    high_pm = rng.uniform(size=n) < 0.02
    pm_ra = np.where(high_pm, rng.normal(0.0, 100.0, n), rng.normal(3.0, 8.0, n))
    pm_dec = np.where(high_pm, rng.normal(0.0, 100.0, n), rng.normal(-5.0, 8.0, n))
    table = Table(
        {
            "id": np.arange(STAR_ID0, STAR_ID0 + n, dtype=np.int64),
            "ra": ra,
            "dec": dec,
            "pm_ra": pm_ra,
            "pm_dec": pm_dec,
            "mag_g": mag_r + g_r,
            "mag_r": mag_r,
            "mag_i": mag_r - r_i,
        }
    )
    # Variables: RR Lyrae-like among well-measured, unsaturated stars.
    candidates = np.flatnonzero((mag_r > 17.0) & (mag_r < 20.0))
    n_var = min(config.n_variables, candidates.size)
    chosen = rng.choice(candidates, size=n_var, replace=False) if n_var else np.array([], int)
    is_var = np.zeros(n, dtype=bool)
    is_var[chosen] = True
    amplitude = np.zeros(n)
    amplitude[chosen] = rng.uniform(0.4, 0.9, n_var)
    period = np.zeros(n)
    period[chosen] = rng.uniform(0.45, 0.75, n_var)
    mjd0 = np.zeros(n)
    mjd0[chosen] = REFERENCE_MJD + rng.uniform(0.0, 1.0, n_var) * period[chosen]
    table["is_variable"] = is_var
    table["var_period"] = period
    table["var_amplitude_g"] = 1.3 * amplitude
    table["var_amplitude_r"] = amplitude
    table["var_amplitude_i"] = 0.8 * amplitude
    table["var_mjd0"] = mjd0
    _describe(table, {"ra": "deg", "dec": "deg", "pm_ra": "mas/yr", "pm_dec": "mas/yr"})
    return table


def _make_galaxies(config: SurveyConfig, radius: float, area: float) -> Table:
    rng = survey_rng(config.seed, "galaxies")
    n = int(rng.poisson(config.galaxy_density * area))
    ra, dec = _sample_disk(rng, n, radius / 3600.0, config.ra, config.dec)
    mag_r = _sample_power_law(rng, n, 18.0, 24.5, 0.33)
    disk_hlr = 0.8 * 10 ** (-0.15 * (mag_r - 20.0)) * rng.lognormal(0.0, 0.3, n)
    disk_hlr = np.clip(disk_hlr, 0.15, 4.0)
    bulge_hlr = disk_hlr * rng.uniform(0.15, 0.4, n)
    bt_r = np.where(rng.uniform(size=n) < 0.3, 0.0, rng.uniform(0.05, 0.6, n))
    # Component colors: bulges red, disks blue, with scatter.
    colors = {
        "bulge": (rng.normal(0.8, 0.05, n), rng.normal(0.40, 0.03, n)),
        "disk": (rng.normal(0.4, 0.10, n), rng.normal(0.20, 0.05, n)),
    }
    flux_r = mag_to_njy(mag_r)
    comp = {"bulge": bt_r * flux_r, "disk": (1.0 - bt_r) * flux_r}
    flux = {b: np.zeros(n) for b in _BANDS}
    bulge_flux = {}
    for name, (g_r, r_i) in colors.items():
        per_band = {
            "g": comp[name] * 10 ** (-0.4 * g_r),
            "r": comp[name],
            "i": comp[name] * 10 ** (0.4 * r_i),
        }
        for b in _BANDS:
            flux[b] += per_band[b]
        if name == "bulge":
            bulge_flux = per_band
    pa = rng.uniform(0.0, 180.0, n)
    q_disk = rng.uniform(0.2, 1.0, n)
    q_bulge = rng.uniform(0.6, 1.0, n)
    beta = np.radians(pa + 90.0)  # major axis angle from +x (west) towards +y (north)
    table = Table(
        {"id": np.arange(GALAXY_ID0, GALAXY_ID0 + n, dtype=np.int64), "ra": ra, "dec": dec}
    )
    for b in _BANDS:
        table[f"mag_{b}"] = AB_NJY_ZERO_POINT - 2.5 * np.log10(flux[b])
    for b in _BANDS:
        table[f"bulge_fraction_{b}"] = bulge_flux[b] / flux[b]
    table["disk_hlr"] = disk_hlr
    table["bulge_hlr"] = bulge_hlr
    for name, q in (("disk", q_disk), ("bulge", q_bulge)):
        e = (1 - q * q) / (1 + q * q)
        table[f"{name}_e1"] = e * np.cos(2 * beta)
        table[f"{name}_e2"] = e * np.sin(2 * beta)
    table["position_angle"] = pa
    _describe(table, {"ra": "deg", "dec": "deg", "disk_hlr": "arcsec", "bulge_hlr": "arcsec"})
    return table


def _make_transients(config: SurveyConfig, plan: SurveyPlan, galaxies: Table) -> Table:
    """Transients near hosts within 60% of the field radius (r < 22.5 preferred)."""
    rng = survey_rng(config.seed, "transients")
    n = config.n_transients
    xi, eta = gnomonic(galaxies["ra"], galaxies["dec"], config.ra, config.dec)
    near = np.hypot(xi, eta) * 3600.0 < 0.6 * plan.camera.field_radius_arcsec
    hosts = np.flatnonzero(near & (galaxies["mag_r"] < 22.5))
    if hosts.size == 0 and near.any():
        hosts = np.flatnonzero(near)[[np.argmin(galaxies["mag_r"][near])]]
    if hosts.size == 0:
        raise DrpError("no galaxy near the field centre to host a transient; set n_transients=0")
    chosen = rng.choice(hosts, size=n, replace=hosts.size < n) if n else np.array([], int)
    mjds = np.array([v.mjd for v in plan.visits])
    span = mjds.max() - mjds.min()
    host = galaxies[chosen]
    offset = host["disk_hlr"] * rng.uniform(0.3, 1.0, n) / 3600.0
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    xi, eta = xi[chosen] + offset * np.cos(phi), eta[chosen] + offset * np.sin(phi)
    ra, dec = inverse_gnomonic(xi, eta, config.ra, config.dec)
    peak_r = rng.uniform(19.5, 20.5, n)
    table = Table(
        {
            "id": np.arange(TRANSIENT_ID0, TRANSIENT_ID0 + n, dtype=np.int64),
            "ra": np.asarray(ra, dtype=float),
            "dec": np.asarray(dec, dtype=float),
            "host_id": np.asarray(host["id"], dtype=np.int64),
            "t0": mjds.min() + rng.uniform(0.1, 0.6, n) * max(span, 1.0),
            "tau_rise": rng.uniform(2.0, 4.0, n),
            "tau_fall_g": rng.uniform(12.0, 18.0, n),
            "tau_fall_r": rng.uniform(20.0, 28.0, n),
            "tau_fall_i": rng.uniform(28.0, 36.0, n),
            "peak_mag_g": peak_r - 0.1,
            "peak_mag_r": peak_r,
            "peak_mag_i": peak_r + 0.1,
        }
    )
    _describe(table, {"ra": "deg", "dec": "deg", "t0": "d", "tau_rise": "d"})
    return table


def _make_asteroids(config: SurveyConfig, plan: SurveyPlan) -> Table:
    rng = survey_rng(config.seed, "asteroids")
    rows = []
    if config.asteroids:
        for epoch in range(config.n_epochs):
            visits = [v for v in plan.visits if v.epoch == epoch]
            mjd_ref = float(np.mean([v.mjd_mid for v in visits]))
            r = 0.4 * plan.camera.field_radius_arcsec / 3600.0 * math.sqrt(rng.uniform())
            phi = rng.uniform(0.0, 2.0 * math.pi)
            ra, dec = inverse_gnomonic(r * math.cos(phi), r * math.sin(phi), config.ra, config.dec)
            speed = rng.uniform(150.0, 300.0)  # arcsec per hour
            direction = rng.uniform(0.0, 2.0 * math.pi)
            mag_r = rng.uniform(19.5, 20.5)
            rows.append(
                {
                    "id": ASTEROID_ID0 + epoch,
                    "mjd_ref": mjd_ref,
                    "ra": float(ra),
                    "dec": float(dec),
                    "rate_ra": speed * math.sin(direction),
                    "rate_dec": speed * math.cos(direction),
                    "mag_g": mag_r + 0.65,
                    "mag_r": mag_r,
                    "mag_i": mag_r - 0.2,
                }
            )
    names = ("id", "mjd_ref", "ra", "dec", "rate_ra", "rate_dec", "mag_g", "mag_r", "mag_i")
    table = (
        Table(rows=[[row[k] for k in names] for row in rows], names=names)
        if rows
        else Table(names=names, dtype=(np.int64,) + (float,) * 8)
    )
    _describe(table, {"ra": "deg", "dec": "deg", "rate_ra": "arcsec/h", "rate_dec": "arcsec/h"})
    return table


def _make_refcat(config: SurveyConfig, stars: Table) -> Table:
    rng = survey_rng(config.seed, "refcat")
    sel = stars[stars["mag_r"] < REFCAT_MAG_LIMIT]
    n = len(sel)
    mag_r = np.asarray(sel["mag_r"])
    pos_err = 0.02 + 0.2 * 10 ** (0.4 * (mag_r - 19.5))
    pm_err = 1.2 * pos_err
    dec = np.asarray(sel["dec"]) + rng.normal(0.0, pos_err) / 3.6e6
    ra = np.asarray(sel["ra"]) + rng.normal(0.0, pos_err) / 3.6e6 / np.cos(np.radians(dec))
    out = Table()
    out["id"] = np.asarray(sel["id"])
    out["ra"] = ra
    out["dec"] = dec
    out["ra_err"] = pos_err
    out["dec_err"] = pos_err
    out["pm_ra"] = np.asarray(sel["pm_ra"]) + rng.normal(0.0, pm_err)
    out["pm_dec"] = np.asarray(sel["pm_dec"]) + rng.normal(0.0, pm_err)
    out["pm_ra_err"] = pm_err
    out["pm_dec_err"] = pm_err
    out["epoch"] = np.full(n, REFERENCE_EPOCH)
    mags = {}
    for b in _BANDS:
        err = 0.001 + 0.01 * 10 ** (0.4 * (np.asarray(sel[f"mag_{b}"]) - 20.0))
        mags[b] = (np.asarray(sel[f"mag_{b}"]) + rng.normal(0.0, err), err)
        out[f"phot_{b}_mag"], out[f"phot_{b}_mag_err"] = mags[b]
    for b in _BANDS:
        flux = mag_to_njy(mags[b][0])
        out[f"{b}_flux"] = flux
        out[f"{b}_fluxErr"] = flux * mags[b][1] * math.log(10.0) / 2.5
    out["phot_variable_flag"] = np.asarray(sel["is_variable"])
    for name, (unit, doc) in REFCAT_COLUMNS.items():
        out[name].unit = unit or None
        out[name].description = doc
    return out


def _describe(table: Table, units: dict[str, str]) -> None:
    for name, unit in units.items():
        if name in table.colnames:
            table[name].unit = unit


# ------------------------------------------------------------------------ state at an epoch
def star_positions(stars: Table, mjd: float) -> tuple[np.ndarray, np.ndarray]:
    """True (ra, dec) of stars at an MJD (proper motion from the reference epoch)."""
    years = (mjd - REFERENCE_MJD) / 365.25
    dec = np.asarray(stars["dec"]) + np.asarray(stars["pm_dec"]) * years / 3.6e6
    cos_dec = np.cos(np.radians(np.asarray(stars["dec"])))
    ra = np.asarray(stars["ra"]) + np.asarray(stars["pm_ra"]) * years / 3.6e6 / cos_dec
    return ra, dec


def variable_phase(stars: Table, mjd: float) -> np.ndarray:
    """Pulsation phase (0 at maximum light) of each star at an MJD; NaN for non-variables."""
    period = np.asarray(stars["var_period"])
    phase = np.full(len(stars), np.nan)
    var = np.asarray(stars["is_variable"])
    phase[var] = np.mod((mjd - np.asarray(stars["var_mjd0"])[var]) / period[var], 1.0)
    return phase


def star_magnitudes(stars: Table, band: str, mjd: float) -> np.ndarray:
    """Magnitudes of stars in a band at an MJD (mean magnitude plus the variable's offset)."""
    phase = variable_phase(stars, mjd)
    amp = np.asarray(stars[f"var_amplitude_{band}"])
    offset = np.where(phase < 0.85, amp * (phase / 0.85 - 0.5), amp * (0.5 - (phase - 0.85) / 0.15))
    return np.asarray(stars[f"mag_{band}"]) + np.nan_to_num(offset)


def transient_flux(transients: Table, band: str, mjd: float) -> np.ndarray:
    """Flux (nJy) of the transients in a band at an MJD (Bazin curve scaled to the peak)."""
    t0 = np.asarray(transients["t0"])
    rise = np.asarray(transients["tau_rise"])
    fall = np.asarray(transients[f"tau_fall_{band}"])
    t_peak = t0 + rise * np.log(fall / rise - 1.0)

    def shape(t: np.ndarray) -> np.ndarray:
        return np.exp(-(t - t0) / fall) / (1.0 + np.exp(-(t - t0) / rise))

    peak = mag_to_njy(np.asarray(transients[f"peak_mag_{band}"]))
    flux = peak * shape(np.full_like(t0, mjd)) / shape(t_peak)
    return np.where(mjd < t0 - 10.0 * rise, 0.0, flux)


def asteroid_positions(asteroids: Table, mjd: float) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) of asteroids at an MJD (linear motion on the tangent plane at ``mjd_ref``)."""
    ra0 = np.asarray(asteroids["ra"])
    dec0 = np.asarray(asteroids["dec"])
    hours = (mjd - np.asarray(asteroids["mjd_ref"])) * 24.0
    ra, dec = np.empty(len(asteroids)), np.empty(len(asteroids))
    for k in range(len(asteroids)):
        xi = asteroids["rate_ra"][k] * hours[k] / 3600.0
        eta = asteroids["rate_dec"][k] * hours[k] / 3600.0
        ra[k], dec[k] = inverse_gnomonic(xi, eta, ra0[k], dec0[k])
    return ra, dec
