"""Scoring what a repository holds against the simulator's truth (``drp report``, ``drp demo``).

:func:`score_repository` reads the single-frame outputs (``calexp``, ``src``, ``icPsfStars``,
``flat``) and the truth (``truth``, ``truthMask``, ``truthVisitConditions``, ``camera``) from the
given collections and returns one JSON-compatible dict. A figure whose datasets do not exist is
``None``, never a guess. The top-level figures (issue 5):

``astrom_rms_mas``
    rms on the sky of ``coord_ra``/``coord_dec`` minus the true position (proper motion
    applied), over bright (PSF S/N >= 100), unflagged, unsaturated, isolated stars (no other
    true source within 8 pixels) matched to truth within 1.5 pixels:
    ``sqrt(mean(dxi^2 + deta^2))``; it includes the stars' own centroid noise.
``zp_err_mmag``
    rms over calexps (visit, detector) of the fitted zero point minus the true one
    (``zp_err_visit_mmag``: the rms over visits of each visit's mean over its detectors). The true zero point is for
    unit flat response; the pipeline's flats are normalized over the focal plane instead, which
    moves every zero point of a band by ``2.5 log10(c)``, ``c`` the median of true flat / our
    flat on the detector. That convention offset is taken out (``zp_convention_mag`` per
    calexp in ``calexps``).
``psf_flux_ratio_median``
    median of ``psfFlux`` (nJy) / true flux of such stars with PSF S/N >= 50.
``psf_flux_pull_rms``
    robust rms (1.4826 MAD) of the pulls ``(psfFlux / true flux - 1) * S/N`` of those stars:
    1 when their scatter is the noise that ``psfFluxErr`` states, at every S/N (PSF-model,
    aperture-correction and zero-point errors would raise it at high S/N).
``psf_size_resid``
    S/N^2-weighted rms of the fractional size residual (model / measured - 1) of the reserved
    PSF stars (outliers excluded), over all ``icPsfStars``.
``psf_e1_resid``, ``psf_e2_resid``
    the same for the ellipticity (distortion) residuals, model minus measured. Like the size
    residual, they include the reserved stars' own measurement noise (of order ``1 / (S/N)`` in
    ellipticity), so they reach the model's accuracy only with many bright stars.
``extendedness_star_completeness``, ``extendedness_galaxy_completeness``
    of the unblended sources with PSF S/N >= 20 matched to a true unsaturated star (galaxy),
    the fraction with ``extendedness`` 0 (1): stars kept as point sources, galaxies found
    extended (the smallest galaxies are not, at any S/N the PSF allows).
``cr_recall``
    fraction of the pixels that received cosmic-ray charge above 5 sigma of their noise (the
    calexp's variance plane; charge divided by the flat as ISR does) that carry the CR plane;
    pixels in SAT or BAD, where no value is usable, are left out.
``cr_star_false_rate``
    fraction of star-core pixels (the 3 x 3 pixels around each unsaturated true star whose
    centre is at least 20 sigma above the sky, without cosmic-ray charge) marked CR.
``sky_noise_ratio``
    measured / expected noise of calexp sky pixels: the median over calexps of the 5-sigma
    clipped standard deviation of ``image / sqrt(variance)`` over unmasked pixels at least 15
    pixels from every true source; 1 when the variance plane (from gain, read noise and signal)
    describes the noise.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table, vstack
from scipy import ndimage
from scipy.spatial import cKDTree

from repo.errors import DatasetNotFoundError, DatasetTypeError
from repo.registry import DatasetRef
from repo.repository import Repository, ensure_progress
from stages.characterize import psf_model  # noqa: F401  (registers the OPTATM PSF type for reading calexps)
from stages.framework.executors import prepare_worker_process
from stages.isr.calibration_products import CalibrationProduct
from stages.isr.stages import camera_from_dataset
from stages.quality.coadd_scores import COADD_KEYS, score_coadds
from stages.quality.external import fallback_counts, summaries
from stages.simulate.truth import masks_from_hdulist

#: Columns of the matched bright stars (:func:`collect_report`).
MATCHED_COLUMNS = ("x", "y", "dra", "ddec", "offset", "ratio", "snr", "mag")

#: Top-level figures every report has (None when their datasets do not exist).
REPORT_KEYS = (
    "astrom_rms_mas",
    "zp_err_mmag",
    "psf_flux_ratio_median",
    "psf_flux_pull_rms",
    "psf_size_resid",
    "psf_e1_resid",
    "psf_e2_resid",
    "extendedness_star_completeness",
    "extendedness_galaxy_completeness",
    "cr_recall",
    "cr_star_false_rate",
    "sky_noise_ratio",
    *COADD_KEYS,
)

#: Smallest PSF-flux S/N of the stars scored for photometry, and for astrometry (where the
#: centroid noise of an S/N 50 star, ~7 mas for a 0.9 arcsec FWHM, would dominate the figure).
BRIGHT_SNR, ASTROM_SNR = 50.0, 100.0

#: Smallest PSF-flux S/N of the sources whose star/galaxy classification is scored.
CLASSIFICATION_SNR = 20.0
#: Matching radius to truth (pixels) and isolation radius (pixels, no other true source).
MATCH_PIXELS, ISOLATION_PIXELS = 1.5, 8.0
FLAT_DIMS = ("instrument", "physical_filter", "detector")
#: Sky pixels for the noise figure are at least this far (pixels) from every true source.
SOURCE_CLEARANCE_PIXELS = 15.0
#: Source flags that keep a star out of the scoring.
EXCLUDED_FLAGS = ("flag_saturated", "flag_blended", "flag_edge", "flag_crCenter", "flag_psfFlux")


def _refs(repo: Repository, dataset_type: str, collections: list[str]) -> list[Any]:
    """The datasets of a type in the collections; none if the type is not registered."""
    try:
        return repo.query_datasets(dataset_type, collections=collections)
    except DatasetTypeError:
        return []


def _find(repo: Repository, dataset_type: str, data_id: dict, collections: list[str]) -> Any:
    """A dataset, or None if its type is not registered or it is not in the collections."""
    try:
        return repo.get(dataset_type, data_id, collections=collections)
    except (DatasetTypeError, DatasetNotFoundError):
        return None


@dataclass
class ReportData:
    """A report and the star-by-star data behind it (what :mod:`stages.quality.plots` draws).

    ``stars``: the bright isolated stars matched to truth in every calexp (columns
    :data:`MATCHED_COLUMNS` and ``visit``, ``detector``, ``band``); ``psf_stars``: every
    calexp's ``icPsfStars`` rows with ``visit``, ``detector``.
    """

    report: dict[str, Any]
    stars: Table
    psf_stars: Table


def score_repository(repo: Repository, collections: list[str], *, jobs: int = 0) -> dict[str, Any]:
    """Score the single-frame outputs in ``collections`` against the truth there (the
    ``report`` of :func:`collect_report`)."""
    return collect_report(repo, collections, jobs=jobs).report


@dataclass
class CalexpScore:
    """What one calexp contributes to the report (see :class:`CalexpScorer`)."""

    row: dict[str, Any]
    matched: Table | None = None
    classified: tuple | None = None
    cr: tuple | None = None
    cores: tuple | None = None


class CalexpScorer:
    """Scores calexps one at a time against the truth, keeping the cameras and flats it read."""

    def __init__(self, repo: Repository, collections: list[str], zp_true: dict[int, float]):
        self.repo, self.collections, self.zp_true = repo, collections, zp_true
        self.cameras: dict[str, Any] = {}
        self.flats: dict[tuple, np.ndarray | None] = {}

    def __call__(self, ref: DatasetRef) -> CalexpScore | None:
        repo, collections = self.repo, self.collections
        data_id = {k: ref.data_id[k] for k in ("instrument", "visit", "detector")}
        instrument = data_id["instrument"]
        if instrument not in self.cameras:
            camera = _find(repo, "camera", {"instrument": instrument}, collections)
            self.cameras[instrument] = None if camera is None else camera_from_dataset(camera)
        truth = _find(repo, "truth", data_id, collections)
        if truth is None:
            return None
        calexp = repo.get(ref)
        row: dict[str, Any] = {"visit": int(data_id["visit"]), "detector": int(data_id["detector"])}
        row["band"] = str(ref.data_id.get("band", truth.meta.get("band", "")))
        score = CalexpScore(row)
        flat_key = tuple(ref.data_id[k] for k in ("instrument", "physical_filter", "detector"))
        if flat_key not in self.flats:
            flat = _find(repo, "flat", dict(zip(FLAT_DIMS, flat_key, strict=True)), collections)
            self.flats[flat_key] = (
                None if flat is None else CalibrationProduct.from_hdulist(flat).image
            )
        flat_image = self.flats[flat_key]
        src = _find(repo, "src", data_id, collections)
        if src is not None:
            matched = _matched_stars(src, truth)
            matched["visit"] = np.full(len(matched), row["visit"])
            matched["detector"] = np.full(len(matched), row["detector"])
            matched["band"] = np.full(len(matched), row["band"])
            score.matched = matched
            score.classified = _classification_counts(src, truth)
        camera = self.cameras[instrument]
        if calexp.photo_calib is not None and flat_image is not None and camera:
            true_flat = camera.flat(int(data_id["detector"]), row["band"])
            convention = 2.5 * math.log10(float(np.median(true_flat / flat_image)))
            row["zero_point"] = calexp.photo_calib.zero_point
            row["zp_convention_mag"] = convention
            row["zp_err_mag"] = row["zero_point"] - self.zp_true[row["visit"]] - convention
        masks = _find(repo, "truthMask", data_id, collections)
        if masks is not None and flat_image is not None:
            masks = masks_from_hdulist(masks)
            score.cr = _cr_pixels(calexp, masks, flat_image)
            score.cores = _star_core_pixels(calexp, masks, truth)
        row["sky_noise_ratio"] = _sky_noise_ratio(calexp, truth)
        return score


_SCORER: list[CalexpScorer] = []


def _start_scorer(parent_pid: int, url: str, options: dict, collections: list, zp_true: dict):
    prepare_worker_process(parent_pid)
    _SCORER[:] = [CalexpScorer(Repository(url, options), collections, zp_true)]


def _score_in_worker(ref: DatasetRef) -> CalexpScore | None:
    return _SCORER[0](ref)


def _score_calexps(
    repo: Repository,
    refs: list[DatasetRef],
    collections: list[str],
    zp_true: dict[int, float],
    jobs: int,
) -> list[CalexpScore | None]:
    """Every calexp's score, in order: on ``jobs`` processes (0: one per core), or here."""
    jobs = jobs or os.cpu_count() or 1
    progress = functools.partial(ensure_progress, total=len(refs), desc="scoring calexps")
    if jobs == 1 or len(refs) < 4 or repo.storage.url.startswith("memory://"):
        scorer = CalexpScorer(repo, collections, zp_true)
        return [scorer(ref) for ref in progress(refs)]
    with ProcessPoolExecutor(
        min(jobs, len(refs)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_scorer,
        initargs=(
            os.getpid(),
            repo.storage.url,
            repo.storage.storage_options,
            collections,
            zp_true,
        ),
    ) as pool:
        return list(progress(pool.map(_score_in_worker, refs)))


def collect_report(repo: Repository, collections: list[str], *, jobs: int = 0) -> ReportData:
    """Score the single-frame outputs in ``collections`` against the truth there.

    Parameters
    ----------
    repo
        The repository.
    collections
        Collections searched in order (outputs and the simulator's truth, e.g.
        ``["SimCam/runs/demo", "SimCam/defaults"]``).
    jobs
        Processes that score the calexps (0: one per core; 1: in this process).

    Returns
    -------
    ReportData
        ``report``: :data:`REPORT_KEYS` (None where the needed datasets are missing),
        ``n_calexps``, per-calexp detail under ``calexps`` and, under ``goals_met``, whether
        each figure meets its goal (:data:`REPORT_GOALS`); and the stars behind it.

    Raises
    ------
    repo.errors.CollectionError
        A collection does not exist.
    """
    repo.registry.flatten(collections)  # an unknown collection is an error, not "no data"
    report: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
    report["collections"] = list(collections)
    calexp_refs = _refs(repo, "calexp", collections)
    report["n_calexps"] = len(calexp_refs)
    psf_stars = _psf_stars(repo, collections)
    report.update(_psf_residuals(psf_stars))
    report.update(fallback_counts(summaries(repo, collections)))
    conditions = _find(repo, "truthVisitConditions", {}, collections)
    if not calexp_refs or conditions is None:
        report["calexps"] = []
        report["goals_met"] = goals_met(report)
        return ReportData(report, _stack([], MATCHED_COLUMNS), psf_stars)
    zp_true = {
        int(v): float(z) for v, z in zip(conditions["visit"], conditions["zero_point"], strict=True)
    }
    rows, stars, cr, cores, noise, classified = [], [], [], [], [], []
    for score in _score_calexps(repo, calexp_refs, collections, zp_true, jobs):
        if score is None:  # no truth for this calexp
            continue
        row = score.row
        if score.matched is not None:
            stars.append(score.matched)
            classified.append(score.classified)
        if score.cr is not None:
            cr.append(score.cr)
            cores.append(score.cores)
        noise.append(row["sky_noise_ratio"])
        rows.append(row)
    report["calexps"] = rows
    zp = [r["zp_err_mag"] for r in rows if "zp_err_mag" in r]
    if zp:
        report["zp_err_mmag"] = 1000.0 * math.sqrt(float(np.mean(np.square(zp))))
        by_visit: dict[int, list[float]] = {}
        for r in rows:
            if "zp_err_mag" in r:
                by_visit.setdefault(r["visit"], []).append(r["zp_err_mag"])
        means = [float(np.mean(v)) for v in by_visit.values()]
        report["zp_err_visit_mmag"] = 1000.0 * math.sqrt(float(np.mean(np.square(means))))
    matched = _stack(stars, MATCHED_COLUMNS)
    if stars:
        report["n_bright_stars"] = int(len(matched))
        ratio, snr = np.asarray(matched["ratio"]), np.asarray(matched["snr"])
        if len(matched):
            report["psf_flux_ratio_median"] = float(np.median(ratio))
            pulls = (ratio - 1.0) * snr
            mad = np.median(np.abs(pulls - np.median(pulls)))
            report["psf_flux_pull_rms"] = float(1.4826 * mad)
        astrometric = np.asarray(matched["offset"])[snr >= ASTROM_SNR]
        report["n_astrometry_stars"] = int(len(astrometric))
        if len(astrometric):
            report["astrom_rms_mas"] = math.sqrt(float(np.mean(astrometric**2)))
    if classified:
        star_ok, n_star, galaxy_ok, n_galaxy = np.sum(classified, axis=0)
        report["extendedness_star_completeness"] = float(star_ok / n_star) if n_star else None
        report["extendedness_galaxy_completeness"] = (
            float(galaxy_ok / n_galaxy) if n_galaxy else None
        )
        report["extendedness_sources"] = int(n_star + n_galaxy)
    if cr:
        found, total = np.sum(cr, axis=0)
        report["cr_recall"] = float(found / total) if total else None
        report["cr_pixels_above_5sigma"] = int(total)
    if cores:
        flagged, total = np.sum(cores, axis=0)
        report["cr_star_false_rate"] = float(flagged / total) if total else None
        report["star_core_pixels"] = int(total)
    if noise:
        report["sky_noise_ratio"] = float(np.median(noise))
    report.update(score_coadds(repo, collections, _refs(repo, "deepCoadd", collections)))
    report["goals_met"] = goals_met(report)
    return ReportData(report, matched, psf_stars)


def _stack(tables: list[Table], columns: tuple[str, ...]) -> Table:
    tables = [t for t in tables if len(t)]
    if not tables:
        return Table({name: np.zeros(0) for name in columns})
    stacked = vstack(tables, metadata_conflicts="silent")
    stacked.meta.clear()  # per-calexp summaries (icPsfStars) do not describe the stack
    return stacked


def _psf_stars(repo: Repository, collections: list[str]) -> Table:
    """Every ``icPsfStars`` row in the collections, with ``visit`` and ``detector``."""
    tables = []
    for ref in _refs(repo, "icPsfStars", collections):
        table = repo.get(ref)
        if len(table):
            table["visit"] = np.full(len(table), int(ref.data_id["visit"]))
            table["detector"] = np.full(len(table), int(ref.data_id["detector"]))
            tables.append(table)
    return _stack(tables, ("snr", "reserved", "outlier", "sizeResid", "e1Resid", "e2Resid"))


def _psf_residuals(stars: Table) -> dict[str, float | None]:
    """S/N^2-weighted rms of the size and ellipticity residuals of the reserved PSF stars."""
    names = {"psf_size_resid": "sizeResid", "psf_e1_resid": "e1Resid", "psf_e2_resid": "e2Resid"}
    if not len(stars):
        return dict.fromkeys(names)
    weight = np.asarray(stars["snr"], float) ** 2
    check = np.asarray(stars["reserved"], bool) & ~np.asarray(stars["outlier"], bool)
    if not check.any():
        return dict.fromkeys(names)
    out: dict[str, float | None] = {}
    for key, column in names.items():
        resid = np.asarray(stars[column], float)
        out[key] = math.sqrt(float(np.sum(weight[check] * resid[check] ** 2) / weight[check].sum()))
    return out


def _classification_counts(src: Table, truth: Table) -> tuple[int, int, int, int]:
    """Unblended sources with PSF S/N >= CLASSIFICATION_SNR matched to a true star (not
    saturated) or galaxy within MATCH_PIXELS: (stars with extendedness 0, stars, galaxies with
    extendedness 1, galaxies); sources without an extendedness count as misclassified."""
    if "extendedness" not in src.colnames or not len(src) or not len(truth):
        return 0, 0, 0, 0
    flux, err = np.asarray(src["psfFlux"], float), np.asarray(src["psfFluxErr"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        good = np.isfinite(flux / err) & (flux / err >= CLASSIFICATION_SNR)
    if "flag_blended" in src.colnames:
        good &= ~np.asarray(src["flag_blended"], bool)
    tree = cKDTree(np.column_stack([truth["x"], truth["y"]]))
    distance, index = tree.query(np.column_stack([src["x"], src["y"]]))
    good &= distance <= MATCH_PIXELS
    kind = np.asarray(truth["source_type"])[index]
    saturated = np.asarray(truth["saturated"], bool)[index]
    ext = np.asarray(src["extendedness"], float)
    star = good & (kind == "star") & ~saturated
    galaxy = good & (kind == "galaxy")
    return (
        int((ext[star] == 0).sum()),
        int(star.sum()),
        int((ext[galaxy] == 1).sum()),
        int(galaxy.sum()),
    )


def _matched_stars(src: Table, truth: Table) -> Table:
    """Bright isolated stars matched to truth: ``x``, ``y`` (pixels), ``dra``, ``ddec`` and
    ``offset`` (calibrated minus true position on the sky, mas), ``ratio`` (psfFlux / true
    flux), ``snr`` (psfFlux S/N) and ``mag`` (true AB magnitude)."""
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    tree = cKDTree(np.column_stack([tx, ty]))
    neighbours = tree.query_ball_point(np.column_stack([tx, ty]), ISOLATION_PIXELS)
    isolated = np.array([len(n) == 1 for n in neighbours])
    star = (np.asarray(truth["source_type"]) == "star") & ~np.asarray(truth["saturated"], bool)
    star &= isolated & np.isfinite(np.asarray(truth["flux_nJy"], float))
    flux, err = np.asarray(src["psfFlux"], float), np.asarray(src["psfFluxErr"], float)
    good = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    good[good] &= flux[good] / err[good] >= BRIGHT_SNR
    for name in EXCLUDED_FLAGS:
        if name in src.colnames:
            good &= ~np.asarray(src[name], bool)
    if not good.any() or not star.any():
        return Table({name: np.zeros(0) for name in MATCHED_COLUMNS})
    sx, sy = np.asarray(src["x"], float)[good], np.asarray(src["y"], float)[good]
    distance, index = tree.query(np.column_stack([sx, sy]), distance_upper_bound=MATCH_PIXELS)
    hit = np.isfinite(distance)
    hit[hit] &= star[index[hit]]
    t = index[hit]
    rows = np.flatnonzero(good)[hit]
    dec_t = np.asarray(truth["dec"], float)[t]
    dra = np.asarray(src["coord_ra"], float)[rows] - np.asarray(truth["ra"], float)[t] + 180.0
    dra = (dra % 360.0 - 180.0) * np.cos(np.radians(dec_t)) * 3.6e6
    ddec = (np.asarray(src["coord_dec"], float)[rows] - dec_t) * 3.6e6
    ratio = flux[rows] / np.asarray(truth["flux_nJy"], float)[t]
    snr = flux[rows] / err[rows]
    true_flux = np.asarray(truth["flux_nJy"], float)[t]
    columns = {
        "x": sx[hit],
        "y": sy[hit],
        "dra": dra,
        "ddec": ddec,
        "offset": np.hypot(dra, ddec),
        "ratio": ratio,
        "snr": snr,
        "mag": 31.4 - 2.5 * np.log10(true_flux),
    }
    return Table(columns)


def _cr_pixels(calexp: Any, masks: dict[str, np.ndarray], flat: np.ndarray) -> tuple[int, int]:
    """(masked, total) cosmic-ray pixels above 5 sigma of the calexp's noise."""
    charge = np.asarray(masks["cosmic_ray_electrons"], float) / flat
    sigma = np.sqrt(np.clip(calexp.variance, 0.0, None))
    usable = (calexp.mask & calexp.bits("SAT", "BAD")) == 0
    above = np.asarray(masks["cosmic_ray"], bool) & (charge > 5.0 * sigma) & usable
    found = (calexp.mask & calexp.bit("CR")) != 0
    return int((above & found).sum()), int(above.sum())


def _star_core_pixels(calexp: Any, masks: dict[str, np.ndarray], truth: Table) -> tuple[int, int]:
    """(marked CR, total) pixels of the 3 x 3 cores of bright unsaturated true stars."""
    ny, nx = calexp.shape
    star = (np.asarray(truth["source_type"]) == "star") & ~np.asarray(truth["saturated"], bool)
    x = np.rint(np.asarray(truth["x"], float)[star]).astype(int)
    y = np.rint(np.asarray(truth["y"], float)[star]).astype(int)
    inside = (x >= 1) & (x < nx - 1) & (y >= 1) & (y < ny - 1)
    x, y = x[inside], y[inside]
    snr = calexp.image[y, x] / np.sqrt(np.clip(calexp.variance[y, x], 1e-12, None))
    x, y = x[snr >= 20.0], y[snr >= 20.0]
    dy, dx = np.mgrid[-1:2, -1:2]
    py, px = (y[:, None] + dy.ravel()).ravel(), (x[:, None] + dx.ravel()).ravel()
    clean = ~np.asarray(masks["cosmic_ray"], bool)[py, px]
    marked = (calexp.mask[py, px] & calexp.bit("CR")) != 0
    return int((marked & clean).sum()), int(clean.sum())


def _sky_noise_ratio(calexp: Any, truth: Table) -> float:
    """Clipped std of ``image / sqrt(variance)`` on unmasked pixels far from true sources."""
    ny, nx = calexp.shape
    x = np.rint(np.asarray(truth["x"], float)).astype(int)
    y = np.rint(np.asarray(truth["y"], float)).astype(int)
    inside = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
    centres = np.zeros(calexp.shape, bool)
    centres[y[inside], x[inside]] = True
    near = ndimage.distance_transform_edt(~centres) <= SOURCE_CLEARANCE_PIXELS
    good = (calexp.mask == 0) & ~near
    z = calexp.image[good] / np.sqrt(np.clip(calexp.variance[good], 1e-12, None))
    return float(sigma_clipped_stats(z, sigma=5.0)[2])


@dataclass(frozen=True)
class Goal:
    """What a report figure should be: at most, at least, or within ``tolerance`` of a value."""

    kind: str  # "max", "min" or "near"
    value: float
    tolerance: float = 0.0

    def met(self, figure: float) -> bool:
        if self.kind == "max":
            return figure <= self.value
        if self.kind == "min":
            return figure >= self.value
        return abs(figure - self.value) <= self.tolerance

    def describe(self, unit: str = "") -> str:
        unit = f" {unit}" if unit else ""
        if self.kind == "near":
            return f"{self.value:g} +- {self.tolerance:g}{unit}"
        return f"{'<=' if self.kind == 'max' else '>='} {self.value:g}{unit}"


#: The goals of single-visit processing (those the issue that built it set, and for star/galaxy
#: separation at S/N >= 20 our own), printed beside each figure.
REPORT_GOALS: dict[str, Goal] = {
    "astrom_rms_mas": Goal("max", 10.0),
    "zp_err_mmag": Goal("max", 5.0),
    "psf_flux_ratio_median": Goal("near", 1.0, 0.005),
    "psf_flux_pull_rms": Goal("near", 1.0, 0.1),
    "psf_size_resid": Goal("max", 0.01),
    "psf_e1_resid": Goal("max", 0.01),
    "psf_e2_resid": Goal("max", 0.01),
    "extendedness_star_completeness": Goal("min", 0.95),
    "extendedness_galaxy_completeness": Goal("min", 0.9),
    "cr_recall": Goal("min", 0.95),
    "cr_star_false_rate": Goal("max", 0.001),
    "sky_noise_ratio": Goal("near", 1.0, 0.02),
    # co-adds (issue 12)
    "coadd_flux_ratio_median": Goal("near", 1.0, 0.002),
    "coadd_flux_pull_rms": Goal("near", 1.0, 0.1),
    "coadd_noise_ratio": Goal("near", 1.0, 0.02),
    "coadd_psf_size_resid": Goal("near", 0.0, 0.01),
    "coadd_psf_e_resid": Goal("max", 0.01),
    "coadd_artifact_leftover": Goal("near", 0.0, 0.02),
}

REPORT_UNITS = {"astrom_rms_mas": "mas", "zp_err_mmag": "mmag"}


def goals_met(report: dict[str, Any]) -> dict[str, bool | None]:
    """For each figure with a goal: whether it is met (None where the figure is missing)."""
    return {
        key: None if report.get(key) is None else goal.met(float(report[key]))
        for key, goal in REPORT_GOALS.items()
    }


def format_report(report: dict[str, Any]) -> str:
    """The report's top-level figures as aligned text lines, each beside its goal (``n/a``
    where missing), and how many goals are met."""
    lines = [
        f"report on {', '.join(report['collections'])}: {report['n_calexps']} calexps, "
        f"{report.get('n_coadds', 0)} co-adds"
    ]
    width = max(len(key) for key in REPORT_KEYS)
    met = goals_met(report)
    rows = []
    for key in REPORT_KEYS:
        value, unit = report.get(key), REPORT_UNITS.get(key, "")
        text = "n/a (no datasets)" if value is None else f"{value:.5g} {unit}".rstrip()
        verdict = {True: "ok", False: "MISSED", None: ""}[met.get(key)]
        goal = REPORT_GOALS[key].describe(unit) if key in REPORT_GOALS else ""
        rows.append((key, text, goal, verdict))
    text_width = max(len(r[1]) for r in rows)
    goal_width = max(len(r[2]) for r in rows)
    for key, text, goal, verdict in rows:
        line = f"  {key:<{width}} {text:<{text_width}}  goal {goal:<{goal_width}}  {verdict}"
        lines.append(line.rstrip())
    known = [v for v in met.values() if v is not None]
    lines.append(f"goals met: {sum(known)} of {len(known)}")
    if "n_psf_not_fitted" in report:
        lines.append(
            f"fallbacks: PSF not fitted {report['n_psf_not_fitted']}, WCS kept "
            f"{report['n_wcs_kept']}, nominal zero point {report['n_zero_point_nominal']}"
        )
    return "\n".join(lines)
