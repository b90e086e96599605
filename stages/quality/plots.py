"""The single-frame report as a figure (``drp report REPO --plot FILE.png``).

Four panels, from the star-by-star data of :func:`stages.quality.report.collect_report`:

* **photometry**: PSF magnitude minus the true magnitude (mmag) of the bright isolated stars
  against their true magnitude, with the binned median and the +-1 sigma the stated errors
  predict (``1085.7 / (S/N)`` mmag): the points should fill the band, centred on zero;
* **astrometry**: calibrated minus true position (mas, east and north) of the stars the
  ``astrom_rms_mas`` figure uses, with a circle of that rms;
* **zero points**: fitted minus true zero point (mmag) of every calexp, by band, against the
  visit, with the rms;
* **PSF model**: size residual (model / measured - 1, %) of the reserved PSF stars against
  their S/N, with the S/N^2-weighted rms (outliers drawn apart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .report import ASTROM_SNR, ReportData

#: Colours of the bands (others grey).
BAND_COLOURS = {"u": "tab:purple", "g": "tab:green", "r": "tab:red", "i": "tab:orange",
                "z": "tab:brown", "y": "black"}  # fmt: skip


def plot_report(data: ReportData, path: str | Path) -> Path:
    """Draw the report's four panels into a PNG at ``path`` and return the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    _photometry(axes[0, 0], data)
    _astrometry(axes[0, 1], data)
    _zero_points(axes[1, 0], data)
    _psf_sizes(axes[1, 1], data)
    report = data.report
    fig.suptitle(
        f"single-frame report: {report['n_calexps']} calexps in {', '.join(report['collections'])}"
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _photometry(ax: Any, data: ReportData) -> None:
    stars = data.stars
    title = "PSF photometry vs truth"
    if not len(stars):
        return _empty(ax, title)
    mag = np.asarray(stars["mag"], float)
    dmag = -2500.0 * np.log10(np.asarray(stars["ratio"], float))
    noise = 1085.7 / np.asarray(stars["snr"], float)
    ax.scatter(mag, dmag, s=4, color="0.5", alpha=0.5, label="bright isolated stars")
    edges = np.quantile(mag, np.linspace(0.0, 1.0, min(12, max(2, mag.size // 30)) + 1))
    index = np.clip(np.searchsorted(edges, mag, side="right") - 1, 0, edges.size - 2)
    bins = [np.flatnonzero(index == k) for k in range(edges.size - 1)]
    bins = [b for b in bins if b.size >= 5]
    centre = [float(np.median(mag[b])) for b in bins]
    ax.plot(centre, [np.median(dmag[b]) for b in bins], "o-", color="tab:red", label="median")
    sigma = [float(np.median(noise[b])) for b in bins]
    ax.plot(centre, sigma, "--", color="tab:blue", label="+-1 sigma from psfFluxErr")
    ax.plot(centre, [-s for s in sigma], "--", color="tab:blue")
    ax.axhline(0.0, color="black", lw=0.8)
    limit = max(5.0, 3.0 * float(np.percentile(noise, 90)))
    ax.set_ylim(-limit, limit)
    ax.set_xlabel("true magnitude (AB)")
    ax.set_ylabel("PSF - true magnitude (mmag)")
    ratio, pull = data.report.get("psf_flux_ratio_median"), data.report.get("psf_flux_pull_rms")
    if ratio is not None and pull is not None:
        title += f": median flux ratio {ratio:.4f}, pull rms {pull:.2f}"
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)


def _astrometry(ax: Any, data: ReportData) -> None:
    stars = data.stars
    title = "astrometry vs truth"
    if not len(stars):
        return _empty(ax, title)
    bright = np.asarray(stars["snr"], float) >= ASTROM_SNR
    dra, ddec = np.asarray(stars["dra"])[bright], np.asarray(stars["ddec"])[bright]
    ax.scatter(dra, ddec, s=4, color="tab:blue", alpha=0.5)
    rms = data.report.get("astrom_rms_mas")
    if rms:
        angle = np.linspace(0.0, 2.0 * np.pi, 200)
        ax.plot(
            rms * np.cos(angle), rms * np.sin(angle), color="tab:red", label=f"rms {rms:.2f} mas"
        )
        ax.legend(loc="upper right", fontsize=8)
        limit = 4.0 * rms
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.axvline(0.0, color="black", lw=0.5)
    ax.set_xlabel("delta RA cos(Dec) (mas)")
    ax.set_ylabel("delta Dec (mas)")
    ax.set_title(f"{title}: {int(bright.sum())} stars with S/N >= {ASTROM_SNR:g}")


def _zero_points(ax: Any, data: ReportData) -> None:
    rows = [r for r in data.report.get("calexps", []) if "zp_err_mag" in r]
    title = "zero point vs truth"
    if not rows:
        return _empty(ax, title)
    visits = sorted({r["visit"] for r in rows})
    position = {v: k for k, v in enumerate(visits)}
    for band in sorted({r["band"] for r in rows}):
        mine = [r for r in rows if r["band"] == band]
        x = [position[r["visit"]] + 0.1 * (r["detector"] % 4 - 1.5) for r in mine]
        y = [1000.0 * r["zp_err_mag"] for r in mine]
        ax.scatter(x, y, s=18, color=BAND_COLOURS.get(band, "0.5"), label=band)
    rms = data.report.get("zp_err_mmag")
    if rms is not None:
        ax.axhspan(-rms, rms, color="0.85", zorder=0, label=f"rms {rms:.2f} mmag")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(len(visits)))
    ax.set_xticklabels([str(v) for v in visits], rotation=60, fontsize=7)
    ax.set_xlabel("visit (one point per detector)")
    ax.set_ylabel("fitted - true zero point (mmag)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)


def _psf_sizes(ax: Any, data: ReportData) -> None:
    stars = data.psf_stars
    title = "PSF model: reserved stars"
    if not len(stars) or not np.asarray(stars["reserved"], bool).any():
        return _empty(ax, title)
    reserved = np.asarray(stars["reserved"], bool)
    outlier = np.asarray(stars["outlier"], bool)
    snr = np.asarray(stars["snr"], float)
    resid = 100.0 * np.asarray(stars["sizeResid"], float)
    good = reserved & ~outlier
    ax.scatter(snr[good], resid[good], s=6, color="tab:blue", alpha=0.6, label="reserved")
    if (reserved & outlier).any():
        ax.scatter(snr[reserved & outlier], resid[reserved & outlier], s=14, marker="x",
                   color="tab:red", label="outliers (left out)")  # fmt: skip
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-5.0, 5.0)
    ax.set_xlabel("S/N (capped at the PSF fit's snr_cap)")
    ax.set_ylabel("model / measured size - 1 (%)")
    figures = [data.report.get(k) for k in ("psf_size_resid", "psf_e1_resid", "psf_e2_resid")]
    if None not in figures:
        size, e1, e2 = figures
        title += f": weighted rms size {100 * size:.2f}%, e1 {e1:.4f}, e2 {e2:.4f}"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
