"""Real data scored against another survey's own figures, and the fallbacks of a run counted.

For real exposures there is no truth; what there is, for DECam, is the Legacy Surveys' CCD table
(``surveyCcds``, ingested from ``survey-ccds-*.fits.gz``): per CCD a zero point (``ccdzpt``,
AB mag of one image unit per second, from hundreds of unsaturated stars of the full CCD), the
seeing (``fwhm``, pixels) and the median Gaia-minus-CP-WCS offset (``ccdraoff``,
``ccddecoff``, arcsec). :func:`compare_with_survey_ccds` sets every ``calexpSummary`` beside
its CCD's row. A zero point is compared only where at least :data:`MIN_ZERO_POINT_STARS`
Gaia stars gave it (the others are listed with the reason); seeing always (ours is the
FWHM of the PSF attached to the calexp, fitted or the CP's PSFEx model, said in
``psf_source``; a Gaussian of the CP's own seeing is not compared with itself).

:func:`fallback_counts` counts the graceful degradations of single-frame processing in a set
of summaries: PSFs not fitted (``psf_source``), WCSs kept (``astrometry_fallback``) and zero
points not measured (``photometry_source``), for ``drp report`` on any data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from repo.errors import DatasetNotFoundError, DatasetTypeError
from repo.repository import Repository

#: Zero points are compared with the survey's where at least this many stars gave ours.
MIN_ZERO_POINT_STARS = 5
#: The goals: zero points within 10 mmag, seeing within 5%.
ZERO_POINT_TOLERANCE_MMAG, SEEING_TOLERANCE = 10.0, 0.05


def summaries(repo: Repository, collections: list[str]) -> list[dict[str, Any]]:
    """Every ``calexpSummary`` in the collections (none if the type is not registered)."""
    try:
        refs = repo.query_datasets("calexpSummary", collections=collections)
    except DatasetTypeError:
        return []
    return [repo.get(ref) for ref in refs]


def fallback_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many calexps fell back, per kind (see the module docstring)."""
    return {
        "n_psf_not_fitted": sum(r.get("psf_source", "fit") != "fit" for r in rows),
        "n_wcs_kept": sum(bool(r.get("astrometry_fallback")) for r in rows),
        "n_zero_point_nominal": sum(r.get("photometry_source") == "nominal" for r in rows),
    }


def compare_with_survey_ccds(repo: Repository, collections: list[str]) -> dict[str, Any] | None:
    """Each DECam calexp's summary beside the survey-ccds row of its CCD.

    Returns None when no ``surveyCcds`` table is in the collections. Otherwise ``ccds``: one
    row per calexp (visit, CCD, band, our and the survey's zero point, seeing and offsets,
    their differences, ``zero_point_compared`` and, where not, ``why_not``); and the totals:
    ``n_ccds``, ``n_zero_point_compared``, ``zp_diff_rms_mmag``, ``zp_within_tolerance``,
    ``seeing_ratio_max_deviation``, ``seeing_within_tolerance`` and :func:`fallback_counts`.
    """
    try:
        table = repo.get("surveyCcds", {"instrument": "DECam"}, collections=collections)
    except (DatasetTypeError, DatasetNotFoundError):
        return None
    names = {
        int(r["id"]): str(r["name"])
        for r in repo.query_dimension_records("detector", where="instrument = 'DECam'")
    }
    index = {
        (int(e), str(c).strip()): i
        for i, (e, c) in enumerate(zip(table["expnum"], table["ccdname"], strict=True))
    }
    found = [s for s in summaries(repo, collections) if s.get("instrument") == "DECam"]
    ccds = []
    for summary in sorted(found, key=lambda s: (s["visit"], s["detector"])):
        ccdname = names.get(int(summary["detector"]), str(summary["detector"]))
        i = index.get((int(summary["visit"]), ccdname))
        if i is not None:
            ccds.append(_compare_one(summary, table[i], ccdname))
    compared = [c for c in ccds if c["zero_point_compared"]]
    zp_diffs = [c["zp_diff_mmag"] for c in compared]
    seeing = [c["seeing_ratio"] - 1.0 for c in ccds if c["seeing_compared"]]
    result = {
        "n_ccds": len(ccds),
        "n_calexps_without_a_survey_row": len(found) - len(ccds),
        "n_zero_point_compared": len(compared),
        "zp_diff_rms_mmag": math.sqrt(float(np.mean(np.square(zp_diffs)))) if zp_diffs else None,
        "zp_within_tolerance": (
            all(abs(d) <= ZERO_POINT_TOLERANCE_MMAG for d in zp_diffs) if zp_diffs else None
        ),
        "seeing_ratio_max_deviation": max(map(abs, seeing)) if seeing else None,
        "seeing_within_tolerance": (
            sum(abs(d) <= SEEING_TOLERANCE for d in seeing) if seeing else None
        ),
        **fallback_counts(found),
        "ccds": ccds,
    }
    return result


def _compare_one(summary: dict[str, Any], row: Any, ccdname: str) -> dict[str, Any]:
    exptime = float(row["exptime"])
    ours = summary.get("zero_point")
    zp_per_second = None if ours is None else float(ours) - 2.5 * math.log10(exptime)
    n_stars = int(summary.get("photometry_stars_used") or 0)
    source = summary.get("photometry_source", "stars")
    why_not = None
    if source != "stars":
        on_image = summary.get("reference_stars_on_image")
        stars = (
            "no Gaia star on the image"
            if on_image == 0
            else f"{'?' if on_image is None else on_image} Gaia star(s) on the image, none "
            "usable (saturated, blended or too faint)"
        )
        why_not = f"{stars}: {source} zero point"
    elif n_stars < MIN_ZERO_POINT_STARS:
        why_not = f"{n_stars} Gaia star(s), fewer than {MIN_ZERO_POINT_STARS}"
    fwhm = summary.get("psf_fwhm_pixels")
    survey_fwhm = float(row["fwhm"])
    psf_source = summary.get("psf_source", "fit")
    ratio = None if fwhm is None or not survey_fwhm > 0 else float(fwhm) / survey_fwhm
    seeing_compared = ratio is not None and psf_source != "seeing"  # that one IS the CP's
    diff = None if zp_per_second is None else 1000.0 * (zp_per_second - float(row["ccdzpt"]))
    return {
        "visit": int(summary["visit"]),
        "ccd": ccdname,
        "band": str(summary["band"]),
        "zero_point": zp_per_second,
        "survey_ccdzpt": float(row["ccdzpt"]),
        "zp_diff_mmag": diff,
        "photometry_stars_used": n_stars,
        "survey_photometry_stars": int(row["ccdnphotom"]),
        "zero_point_compared": why_not is None,
        "why_not": why_not,
        "psf_fwhm_pixels": fwhm,
        "survey_fwhm_pixels": survey_fwhm,
        "seeing_ratio": ratio,
        "seeing_compared": seeing_compared,
        "psf_source": psf_source,
        "astrometry_offset_arcsec": summary.get("astrometry_offset_arcsec"),
        "survey_offset_arcsec": math.hypot(float(row["ccdraoff"]), float(row["ccddecoff"])),
        "astrometry_fallback": bool(summary.get("astrometry_fallback")),
    }


def format_survey_comparison(result: dict[str, Any]) -> str:
    """The comparison as text: one line per CCD, then the totals beside the goals."""
    lines = [
        f"against the Legacy Surveys' survey-ccds table: {result['n_ccds']} CCDs",
        f"  {'visit':>7} {'ccd':<4} {'band':<4} {'zp':>8} {'ccdzpt':>8} {'dzp mmag':>9} "
        f"{'fwhm':>6} {'survey':>6} {'ratio':>6}  psf     notes",
    ]

    def num(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    for c in result["ccds"]:
        lines.append(
            f"  {c['visit']:>7} {c['ccd']:<4} {c['band']:<4} {num(c['zero_point'], '8.4f')} "
            f"{c['survey_ccdzpt']:8.4f} {num(c['zp_diff_mmag'], '9.1f')} "
            f"{num(c['psf_fwhm_pixels'], '6.3f')} {c['survey_fwhm_pixels']:6.3f} "
            f"{num(c['seeing_ratio'], '6.3f')}  {c['psf_source']:<7} "
            f"{'' if c['zero_point_compared'] else 'zp not compared: ' + str(c['why_not'])}"
            f"{'; WCS kept' if c['astrometry_fallback'] else ''}".rstrip()
        )
    n_seeing = sum(c["seeing_compared"] for c in result["ccds"])
    lines.append(
        f"zero points compared on {result['n_zero_point_compared']} of {result['n_ccds']} CCDs "
        f"(>= {MIN_ZERO_POINT_STARS} Gaia stars): rms difference "
        f"{num(result['zp_diff_rms_mmag'], '.1f')} mmag, goal <= {ZERO_POINT_TOLERANCE_MMAG:g}"
    )
    lines.append(
        f"seeing within {100 * SEEING_TOLERANCE:g}% of the survey's fwhm on "
        f"{num(result['seeing_within_tolerance'], 'd')} of {n_seeing} CCDs "
        f"(largest deviation {num(result['seeing_ratio_max_deviation'], '.1%')}; a PSF from "
        "the CP's header seeing is not compared)"
    )
    return "\n".join(lines)
