"""Scoring the co-adds against the simulator's truth (part of ``drp report``).

For each ``deepCoadd`` the truth tables of its inputs (the visits and detectors its PSF lists)
give the true sources; the figures, over all co-adds:

* ``coadd_flux_ratio_median``, ``coadd_flux_pull_rms``: bright (S/N >= 50) isolated constant
  stars, never saturated, with no other true source within ``ISOLATION_PIXELS``: the PSF flux
  with the co-add PSF (:func:`stages.measure.psf_flux.psf_fluxes`), taken to total flux with the
  aperture correction of the S/N >= 300 stars (12-pixel aperture over the CoaddPsf's enclosed
  fraction there, ``coadd_aperture_correction``), over the true flux (constant stars have one
  flux in every visit); pulls (of stars below S/N ``PULL_MAX_SNR``) with the error from the
  variance plane times ``NOISECOR`` (the warps' noise correlation,
  :mod:`stages.coadd.resample`), as a robust rms (1.4826 MAD).
* ``coadd_noise_ratio``: clipped std of ``image / sqrt(variance)`` on pixels far from every true
  source (the co-add's pixel noise against its variance plane).
* ``coadd_psf_size_resid``, ``coadd_psf_e_resid``: adaptive moments of the bright stars (S/N >=
  100) against the CoaddPsf's kernel at their positions: median of the relative size difference
  (determinant radius) and the S/N^2-weighted rms of the ellipticity residuals (e1 and e2
  pooled), as the single-frame figures.
* ``coadd_artifact_leftover``: the fraction of an asteroid's single-epoch flux found in the
  co-add at its trail (aperture of half the trail plus 10 pixels, only where no static source is
  within 10 pixels of it), the inverse-variance weighted mean over the asteroids scored, with its
  error, the largest single value and the rms of value / noise (1 if what is left is noise); a
  co-add without rejection keeps its weight's share (~1/N).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sep
from astropy.stats import sigma_clipped_stats
from astropy.table import Table, vstack
from scipy import ndimage
from scipy.spatial import cKDTree

from repo.errors import DatasetNotFoundError, DatasetTypeError, InvalidDataIdError
from repo.repository import Repository
from stages.coadd import coadd_psf  # noqa: F401  (registers the COADD PSF type)
from stages.measure.moments import adaptive_moments
from stages.measure.psf_flux import psf_fluxes

#: Figures of the co-add scoring (None where there are no co-adds or truth).
COADD_KEYS = (
    "coadd_flux_ratio_median",
    "coadd_flux_pull_rms",
    "coadd_noise_ratio",
    "coadd_psf_size_resid",
    "coadd_psf_e_resid",
    "coadd_artifact_leftover",
)

APERTURE_PIXELS = 12.0
ISOLATION_PIXELS = 20.0
CLEARANCE_PIXELS = 15.0
BRIGHT_SNR, SHAPE_SNR, APERTURE_CORRECTION_SNR = 50.0, 100.0, 300.0
#: Pulls are scored below this S/N: above it the 0.1% calibration floor of the co-add (its
#: inputs' zero points and PSF models) is comparable with the photon noise.
PULL_MAX_SNR = 1000.0
#: Mask planes that disqualify a star (an input left out near it, or no data).
BAD_PLANES = ("NO_DATA", "REJECTED", "CLIPPED", "SAT", "BAD", "INEXACT_PSF")


def score_coadds(repo: Repository, collections: list[str], refs: list[Any]) -> dict[str, Any]:
    """The :data:`COADD_KEYS` figures over the ``deepCoadd`` datasets ``refs``, with counts."""
    out: dict[str, Any] = dict.fromkeys(COADD_KEYS)
    out["n_coadds"] = len(refs)
    if not refs:
        return out
    instruments = repo.registry.dimension_records("instrument")["name"].to_list()
    truth_cache: dict[tuple[int, int], Table | None] = {}
    stars, noise, leftovers = [], [], []
    for ref in refs:
        coadd = repo.get(ref)
        truth = _input_truth(repo, collections, instruments, coadd, truth_cache)
        if truth is None or not len(truth):
            continue
        stars.append(_star_scores(coadd, truth))
        noise.append(_noise_ratio(coadd, truth))
        leftovers.extend(_artifact_leftovers(coadd, truth))
    if not stars:
        return out
    table = vstack(stars)
    bright = np.asarray(table["snr"]) >= BRIGHT_SNR
    out["n_coadd_stars"] = int(bright.sum())
    if bright.any():
        flux, err = np.asarray(table["flux"]), np.asarray(table["err"])
        # PSF fluxes to total: the aperture correction of the brightest stars (the kernel images
        # end where the PSF's wings do not), as a measurement on the co-add would do
        brightest = np.asarray(table["snr"]) >= APERTURE_CORRECTION_SNR
        ratios = np.asarray(table["aperture_total"])[brightest] / flux[brightest]
        ratios = ratios[np.isfinite(ratios)]
        correction = float(np.median(ratios)) if ratios.size >= 5 else 1.0
        out["coadd_aperture_correction"] = correction
        total = flux[bright] * correction
        true_flux = np.asarray(table["true_flux"])[bright]
        out["coadd_flux_ratio_median"] = float(np.median(total / true_flux))
        pulls = (total - true_flux) / (err[bright] * correction)
        pulls = pulls[np.asarray(table["snr"])[bright] < PULL_MAX_SNR]
        out["coadd_flux_pull_rms"] = float(1.4826 * np.median(np.abs(pulls - np.median(pulls))))
    shaped = (np.asarray(table["snr"]) >= SHAPE_SNR) & ~np.asarray(table["shape_failed"])
    if shaped.any():
        out["coadd_psf_size_resid"] = float(np.median(np.asarray(table["size_resid"])[shaped]))
        e = np.concatenate(
            [np.asarray(table["e1_resid"])[shaped], np.asarray(table["e2_resid"])[shaped]]
        )
        weight = np.tile(np.asarray(table["snr"])[shaped] ** 2, 2)
        out["coadd_psf_e_resid"] = float(np.sqrt(np.sum(weight * e**2) / weight.sum()))
    out["coadd_noise_ratio"] = float(np.median(noise))
    out["n_artifacts_scored"] = len(leftovers)
    if leftovers:
        fraction, error = np.array(leftovers).T
        weight = 1.0 / error**2
        out["coadd_artifact_leftover"] = float(np.sum(weight * fraction) / weight.sum())
        out["coadd_artifact_leftover_err"] = float(1.0 / math.sqrt(weight.sum()))
        out["coadd_artifact_leftover_max"] = float(np.max(np.abs(fraction)))
        out["coadd_artifact_leftover_pull_rms"] = float(np.sqrt(np.mean((fraction / error) ** 2)))
    return out


def _input_truth(
    repo: Repository, collections: list[str], instruments: list[str], coadd: Any, cache: dict
) -> Table | None:
    """The truth rows of every input (visit, detector) of a co-add, one table."""
    inputs = getattr(coadd.psf, "inputs", ())
    tables = []
    for item in inputs:
        key = (item.visit, item.detector)
        if key not in cache:
            cache[key] = None
            for instrument in instruments:
                data_id = {"instrument": instrument, "visit": item.visit, "detector": item.detector}
                try:
                    cache[key] = repo.get("truth", data_id, collections=collections)
                    break
                except (DatasetNotFoundError, DatasetTypeError, InvalidDataIdError):
                    continue
        table = cache[key]
        if table is not None and len(table):
            keep = table["id", "source_type", "is_variable", "ra", "dec", "flux_nJy", "saturated"]
            keep["visit"] = item.visit
            keep["trail_length"] = table["trail_length"]
            tables.append(keep)
    return vstack(tables, metadata_conflicts="silent") if tables else None


def _pixels(coadd: Any, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = coadd.wcs.world_to_pixel_values(ra, dec)
    return np.asarray(x, float), np.asarray(y, float)


def _static_sources(truth: Table) -> Table:
    """One row per static source (stars and galaxies): mean position, mean flux, ever saturated,
    variable."""
    kinds = np.asarray(truth["source_type"]).astype(str)
    static = truth[(kinds == "star") | (kinds == "galaxy")]
    ids, index, inverse = np.unique(
        np.asarray(static["id"]), return_index=True, return_inverse=True
    )
    counts = np.bincount(inverse)
    mean = {
        name: np.bincount(inverse, weights=np.asarray(static[name], float)) / counts
        for name in ("ra", "dec", "flux_nJy")
    }
    saturated = np.bincount(inverse, weights=np.asarray(static["saturated"], float)) > 0
    return Table(
        {
            "id": ids,
            "star": np.asarray(static["source_type"]).astype(str)[index] == "star",
            "variable": np.asarray(static["is_variable"], bool)[index],
            "saturated": saturated,
            **mean,
        }
    )


def _star_scores(coadd: Any, truth: Table) -> Table:
    sources = _static_sources(truth)
    x, y = _pixels(coadd, np.asarray(sources["ra"]), np.asarray(sources["dec"]))
    ny, nx = coadd.shape
    tree = cKDTree(np.column_stack([x, y]))
    neighbours = np.array(
        [len(n) - 1 for n in tree.query_ball_point(np.column_stack([x, y]), ISOLATION_PIXELS)]
    )
    margin = 25
    keep = (
        np.asarray(sources["star"])
        & ~np.asarray(sources["variable"])
        & ~np.asarray(sources["saturated"])
        & (neighbours == 0)
        & (x > margin)
        & (x < nx - margin)
        & (y > margin)
        & (y < ny - margin)
    )
    bad = coadd.bits(*[p for p in BAD_PLANES if p in coadd.mask_planes])
    near_bad = ndimage.binary_dilation((coadd.mask & bad) != 0, iterations=int(APERTURE_PIXELS))
    keep &= ~near_bad[
        np.clip(np.rint(y), 0, ny - 1).astype(int), np.clip(np.rint(x), 0, nx - 1).astype(int)
    ]
    x, y, true_flux = x[keep], y[keep], np.asarray(sources["flux_nJy"])[keep]
    empty = Table(
        names=(
            "flux",
            "err",
            "true_flux",
            "aperture_total",
            "snr",
            "size_resid",
            "e1_resid",
            "e2_resid",
            "shape_failed",
        ),
        dtype=(float,) * 8 + (bool,),
    )
    if not x.size:
        return empty
    image = np.ascontiguousarray(np.nan_to_num(coadd.image), np.float64)
    variance = np.ascontiguousarray(np.nan_to_num(coadd.variance), np.float64)
    measured = psf_fluxes(image, variance, x, y, coadd.psf)
    flux = measured["psfFlux"]
    err = measured["psfFluxErr"] * math.sqrt(float(coadd.metadata.get("NOISECOR", 1.0)))
    aperture, _, _ = sep.sum_circle(image, x, y, APERTURE_PIXELS, subpix=0)
    # the enclosed fraction (GalSim-drawn wings) only where the aperture correction needs it
    fraction = np.full(x.size, np.nan)
    for k in np.flatnonzero(flux / err >= APERTURE_CORRECTION_SNR):
        fraction[k] = coadd.psf.enclosed_fraction(x[k], y[k], APERTURE_PIXELS)
    moments = adaptive_moments(image, x, y, sigma0=2.0)
    kernels = [coadd.psf.kernel_image(a, b) for a, b in zip(x, y, strict=True)]
    psf_moments = [_kernel_moments(k) for k in kernels]
    size = (moments["ixx"] * moments["iyy"] - moments["ixy"] ** 2) ** 0.25
    psf_size = np.array([(m[0] * m[1] - m[2] ** 2) ** 0.25 for m in psf_moments])
    e1, e2 = _ellipticity(moments["ixx"], moments["iyy"], moments["ixy"])
    pm = np.array(psf_moments)
    pe1, pe2 = _ellipticity(pm[:, 0], pm[:, 1], pm[:, 2])
    return Table(
        {
            "flux": flux,
            "err": err,
            "true_flux": true_flux,
            "aperture_total": aperture / fraction,
            "snr": flux / err,
            "size_resid": size / psf_size - 1.0,
            "e1_resid": e1 - pe1,
            "e2_resid": e2 - pe2,
            "shape_failed": np.asarray(moments["failed"], bool) | ~np.isfinite(size),
        }
    )


def _kernel_moments(kernel: np.ndarray) -> tuple[float, float, float]:
    c = (kernel.shape[0] - 1) / 2.0
    m = adaptive_moments(
        np.ascontiguousarray(kernel, np.float64),
        np.array([c]),
        np.array([c]),
        2.0,
        half_size=int(c),
    )
    return float(m["ixx"][0]), float(m["iyy"][0]), float(m["ixy"][0])


def _ellipticity(ixx: Any, iyy: Any, ixy: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(ixx) + np.asarray(iyy)
    return (np.asarray(ixx) - np.asarray(iyy)) / t, 2.0 * np.asarray(ixy) / t


def _noise_ratio(coadd: Any, truth: Table) -> float:
    x, y = _pixels(coadd, np.asarray(truth["ra"], float), np.asarray(truth["dec"], float))
    ny, nx = coadd.shape
    inside = (x >= 0) & (x < nx - 0.5) & (y >= 0) & (y < ny - 0.5)
    centres = np.zeros(coadd.shape, bool)
    centres[np.rint(y[inside]).astype(int), np.rint(x[inside]).astype(int)] = True
    near = ndimage.distance_transform_edt(~centres) <= CLEARANCE_PIXELS
    good = (
        (coadd.mask & coadd.bits(*[p for p in BAD_PLANES if p in coadd.mask_planes])) == 0
    ) & ~near
    good &= np.isfinite(coadd.image) & (coadd.variance > 0)
    z = coadd.image[good] / np.sqrt(coadd.variance[good])
    return float(sigma_clipped_stats(z, sigma=5.0)[2])


def _artifact_leftovers(coadd: Any, truth: Table) -> list[tuple[float, float]]:
    """(leftover fraction, its noise) of each asteroid that can be scored on a co-add."""
    kinds = np.asarray(truth["source_type"]).astype(str)
    asteroids = truth[kinds == "asteroid"]
    if not len(asteroids):
        return []
    static = _static_sources(truth)
    sx, sy = _pixels(coadd, np.asarray(static["ra"]), np.asarray(static["dec"]))
    tree = cKDTree(np.column_stack([sx, sy]))
    x, y = _pixels(coadd, np.asarray(asteroids["ra"], float), np.asarray(asteroids["dec"], float))
    ny, nx = coadd.shape
    image = np.ascontiguousarray(np.nan_to_num(coadd.image), np.float64)
    variance = np.ascontiguousarray(np.nan_to_num(coadd.variance), np.float64)
    noise_factor = float(coadd.metadata.get("NOISECOR", 1.0))
    no_data = (coadd.mask & coadd.bit("NO_DATA")) != 0
    out = []
    for k in range(len(asteroids)):
        radius = float(asteroids["trail_length"][k]) / 2.0 + 10.0
        if not (radius < x[k] < nx - radius and radius < y[k] < ny - radius):
            continue
        if tree.query_ball_point([x[k], y[k]], radius + 10.0):
            continue
        window = no_data[
            int(y[k] - radius) : int(y[k] + radius) + 1, int(x[k] - radius) : int(x[k] + radius) + 1
        ]
        if window.any():
            continue
        flux, _, _ = sep.sum_circle(image, [x[k]], [y[k]], radius, subpix=0)
        sumvar, _, _ = sep.sum_circle(variance, [x[k]], [y[k]], radius, subpix=0)
        single = float(asteroids["flux_nJy"][k])
        if single > 0 and math.isfinite(flux[0]):
            error = math.sqrt(max(float(sumvar[0]), 0.0) * noise_factor)
            out.append((float(flux[0]) / single, error / single))
    return out
