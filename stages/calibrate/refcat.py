"""Reference catalogs for calibration: reading them, cutting them to a region, moving the stars.

Calibration works on one table layout, the *reference catalog* of the simulated survey
(:data:`stages.simulate.REFCAT_COLUMNS`): ``id``, ``ra``, ``dec`` (deg, at ``epoch``), ``ra_err``
and ``dec_err`` (mas, on the sky), ``pm_ra`` (mu_alpha*, includes cos dec) and ``pm_dec``
(mas/yr) with their errors, ``epoch`` (Julian year) and magnitudes ``phot_<band>_mag`` with
``phot_<band>_mag_err``. :func:`read_gaia_shards` brings the Gaia shard files that legacypipe uses
(``chunk-NNNNN.fits``, Gaia DR2/EDR3 columns) into that layout, keeping Gaia's own photometry as
``phot_g_mean_mag``, ``phot_bp_mean_mag`` and ``phot_rp_mean_mag`` (Vega magnitudes, G, BP, RP).

:func:`apply_proper_motion` moves the stars to the epoch of an exposure (linear motion on the
sky, the same model the simulator uses; parallax is ignored) and grows the position errors by
the proper-motion errors times the time span. :func:`mjd_to_epoch` converts an MJD to a Julian
year (J2000.0 = MJD 51544.5).

In a repository a reference catalog is sharded by HEALPix pixel (:func:`put_refcat_shards`,
dimension ``healpix7``, as Rubin's refcats are by HTM level 7): the quantum graph gives each
calibration quantum the shards its detector may overlap, and :func:`join_shards` makes them
one table again.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table, vstack

from repo.errors import CorruptDatasetError, DrpError

#: Columns every reference catalog has after reading (magnitude columns vary).
REQUIRED_COLUMNS = (
    "id", "ra", "dec", "ra_err", "dec_err", "pm_ra", "pm_dec", "pm_ra_err", "pm_dec_err", "epoch",
)  # fmt: skip
#: Gaia shard column -> reference catalog column (the photometry keeps its Gaia names).
GAIA_COLUMNS = {
    "source_id": "id",
    "ra": "ra",
    "dec": "dec",
    "ra_error": "ra_err",
    "dec_error": "dec_err",
    "pmra": "pm_ra",
    "pmdec": "pm_dec",
    "pmra_error": "pm_ra_err",
    "pmdec_error": "pm_dec_err",
    "ref_epoch": "epoch",
    "phot_g_mean_mag": "phot_g_mean_mag",
    "phot_bp_mean_mag": "phot_bp_mean_mag",
    "phot_rp_mean_mag": "phot_rp_mean_mag",
    "phot_variable_flag": "phot_variable_flag",
    "astrometric_excess_noise": "astrometric_excess_noise",
}
#: MJD of J2000.0 and days per Julian year.
MJD_J2000, JULIAN_YEAR_DAYS = 51544.5, 365.25


def mjd_to_epoch(mjd: float) -> float:
    """Julian year (e.g. 2016.0) of a modified Julian date."""
    return 2000.0 + (float(mjd) - MJD_J2000) / JULIAN_YEAR_DAYS


def empty_refcat() -> Table:
    """A reference catalog without stars (the columns of :data:`REQUIRED_COLUMNS`)."""
    return Table(
        {name: np.zeros(0, np.int64 if name == "id" else float) for name in REQUIRED_COLUMNS}
    )


def check_refcat(refcat: Table, what: str = "reference catalog") -> None:
    """Raise :class:`DrpError` naming ``what`` if ``refcat`` lacks a required column."""
    missing = [name for name in REQUIRED_COLUMNS if name not in refcat.colnames]
    if missing:
        raise DrpError(f"{what} lacks the columns {', '.join(missing)}")


def read_gaia_shards(paths: Sequence[str | os.PathLike[str]]) -> Table:
    """Read legacypipe Gaia shard files (``chunk-NNNNN.fits``) into one reference catalog.

    Parameters
    ----------
    paths : sequence of path-like
        The shard files (FITS binary tables with Gaia archive column names).

    Returns
    -------
    astropy.table.Table
        The columns of :data:`REQUIRED_COLUMNS` plus Gaia's G, BP and RP magnitudes (NaN where
        missing), ``phot_bp_rp`` (BP - RP) and ``phot_variable_flag`` (bool). Stars without a
        proper motion (two-parameter solutions) get ``pm = 0`` with a 10 mas/yr error, a
        generous bound on the motion of a faint field star. Duplicates across shards are
        dropped.

    Raises
    ------
    repo.errors.DrpError
        No files given, a file that cannot be read (:class:`CorruptDatasetError`) or that lacks
        Gaia columns; the message names the file.
    """
    if not paths:
        raise DrpError("read_gaia_shards: no Gaia shard files given")
    tables = [_read_gaia_shard(os.fspath(path)) for path in paths]
    table = vstack(tables, metadata_conflicts="silent")
    _, first = np.unique(np.asarray(table["id"]), return_index=True)
    table = table[np.sort(first)]
    table["phot_bp_rp"] = table["phot_bp_mean_mag"] - table["phot_rp_mean_mag"]
    return table


def _read_gaia_shard(path: str) -> Table:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # a broken file raises below
            with fits.open(path, memmap=False) as hdul:
                data = Table(hdul[1].data)
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise CorruptDatasetError(f"{path}: cannot read a Gaia shard table ({exc})") from exc
    missing = [name for name in GAIA_COLUMNS if name not in data.colnames]
    if missing:
        raise DrpError(f"{path}: not a Gaia shard (no column {', '.join(missing)})")
    out = Table()
    for gaia_name, name in GAIA_COLUMNS.items():
        column = np.asarray(data[gaia_name])
        if name == "id":
            out[name] = column.astype(np.int64)
        elif name == "phot_variable_flag":
            out[name] = _variable_flags(column)
        else:
            out[name] = column.astype(np.float64)
    for name in ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag"):
        out[name][out[name] <= 0] = np.nan  # EDR3 writes 0 for a missing magnitude
    no_pm = ~(np.isfinite(out["pm_ra"]) & np.isfinite(out["pm_dec"]))
    for name in ("pm_ra", "pm_dec"):
        out[name][no_pm] = 0.0
        out[f"{name}_err"][no_pm] = 10.0
    return out


def _variable_flags(column: np.ndarray) -> np.ndarray:
    if column.dtype.kind == "b":
        return column.astype(bool)
    text = np.char.strip(np.char.upper(column.astype(str)))
    return text == "VARIABLE"


#: HEALPix order (nested) of the shards of a reference catalog: the ``healpix7`` dimension,
#: pixels of ~0.46 deg (a few per CCD field of view), as Rubin shards by HTM level 7.
REFCAT_HEALPIX_ORDER = 7
REFCAT_SHARD_DIMENSION = "healpix7"


def sort_by_healpix(refcat: Table, order: int = REFCAT_HEALPIX_ORDER) -> Table:
    """``refcat`` with a ``healpix`` column (nested index at ``order``), sorted by it, so
    that the stars of one region are stored together (Rubin's refcats shard by HTM, LSDB's
    catalogs by HEALPix; the column is the partition key). ``meta["healpix_order"]`` says
    the order."""
    from astropy import units as u
    from astropy_healpix import HEALPix  # reproject's dependency

    check_refcat(refcat)
    pixels = HEALPix(nside=2**order, order="nested").lonlat_to_healpix(
        np.asarray(refcat["ra"], float) * u.deg, np.asarray(refcat["dec"], float) * u.deg
    )
    out = refcat[np.argsort(pixels, kind="stable")]
    out["healpix"] = np.sort(pixels).astype(np.int64)
    out.meta["healpix_order"] = int(order)
    return out


def healpix_shards(refcat: Table, order: int = REFCAT_HEALPIX_ORDER) -> dict[int, Table]:
    """The catalog split by HEALPix pixel: ``{pixel: rows}`` (:func:`sort_by_healpix`)."""
    ordered = sort_by_healpix(refcat, order)
    pixels = np.asarray(ordered["healpix"])
    starts = np.flatnonzero(np.r_[True, pixels[1:] != pixels[:-1]])
    ends = np.r_[starts[1:], len(pixels)]
    return {int(pixels[a]): ordered[a:b] for a, b in zip(starts, ends, strict=True)}


def put_refcat_shards(
    repo: Any, refcat: Table, dataset_type: str, run: str, *, mode: str = "error"
) -> int:
    """Store a reference catalog as HEALPix shards (:func:`healpix_shards`), one dataset per
    pixel with stars, registering the dataset type and the pixels; returns the shard count.
    Inside the caller's transaction, if any."""
    shards = healpix_shards(refcat)
    repo.register_dataset_type(dataset_type, [REFCAT_SHARD_DIMENSION], "Catalog")
    repo.insert_dimension_records(REFCAT_SHARD_DIMENSION, [{"id": p} for p in shards])
    with repo.transaction():
        for pixel, shard in shards.items():
            repo.put(shard, dataset_type, {REFCAT_SHARD_DIMENSION: pixel}, run=run, mode=mode)
    return len(shards)


def join_shards(refcat: Table | Mapping[Any, Table]) -> Table:
    """One catalog from the shards a stage receives (``{dataId: Table}``), or the table itself."""
    if isinstance(refcat, Table):
        return refcat
    tables = list(refcat.values())
    if not tables:
        raise DrpError("no reference catalog shard covers this image")
    return tables[0] if len(tables) == 1 else vstack(tables, metadata_conflicts="silent")


def region_mask(refcat: Table, ra: float, dec: float, radius_deg: float) -> np.ndarray:
    """True for the rows of ``refcat`` within ``radius_deg`` (great circle) of (ra, dec)."""
    check_refcat(refcat)
    r1, d1 = np.radians(np.asarray(refcat["ra"], float)), np.radians(np.asarray(refcat["dec"]))
    r0, d0 = math.radians(ra), math.radians(dec)
    cos_sep = np.sin(d1) * math.sin(d0) + np.cos(d1) * math.cos(d0) * np.cos(r1 - r0)
    return cos_sep >= math.cos(math.radians(radius_deg))


def select_region(refcat: Table, ra: float, dec: float, radius_deg: float) -> Table:
    """The rows of ``refcat`` within ``radius_deg`` (great-circle distance) of (ra, dec)."""
    return refcat[region_mask(refcat, ra, dec, radius_deg)]


def apply_proper_motion(refcat: Table, epoch: float) -> Table:
    """A copy of ``refcat`` with positions moved to ``epoch`` (Julian year).

    ``dec += pm_dec * dt`` and ``ra += pm_ra * dt / cos(dec)`` (``dt`` in years from each
    star's catalog epoch); ``ra_err`` and ``dec_err`` grow to
    ``hypot(err, pm_err * dt)`` and ``epoch`` becomes the new epoch. Parallax is ignored.

    Parameters
    ----------
    refcat : astropy.table.Table
        A reference catalog (:data:`REQUIRED_COLUMNS`).
    epoch : float
        Target epoch (Julian year); see :func:`mjd_to_epoch`.

    Returns
    -------
    astropy.table.Table
        The moved catalog.
    """
    check_refcat(refcat)
    if not math.isfinite(epoch):
        raise DrpError(f"apply_proper_motion: epoch must be finite, got {epoch}")
    out = refcat.copy()
    dt = float(epoch) - np.asarray(refcat["epoch"], dtype=float)
    dec0 = np.asarray(refcat["dec"], dtype=float)
    cos_dec = np.cos(np.radians(dec0))
    out["dec"] = dec0 + np.asarray(refcat["pm_dec"], float) * dt / 3.6e6
    ra = np.asarray(refcat["ra"], float) + np.asarray(refcat["pm_ra"], float) * dt / 3.6e6 / cos_dec
    out["ra"] = np.mod(ra, 360.0)
    for axis in ("ra", "dec"):
        err = np.asarray(refcat[f"{axis}_err"], float)
        pm_err = np.asarray(refcat[f"pm_{axis}_err"], float)
        out[f"{axis}_err"] = np.hypot(err, pm_err * dt)
    out["epoch"] = np.full(len(out), float(epoch))
    return out
