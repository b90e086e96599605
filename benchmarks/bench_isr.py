"""Benchmark the pixel-level stages: seconds per megapixel of each step on a simulated detector.

Run by hand; prints figures, asserts nothing::

    python benchmarks/bench_isr.py                # a default-preset detector (1024 x 1024)
    python benchmarks/bench_isr.py --size 2048    # the size of astroscrappy's quoted 4.6 s

Steps: master bias, dark and flat (from the preset's 5 frames each), ISR of one science raw,
cosmic rays (one pass with the true PSF size, and the pipeline's two passes that learn it), the
repair, the background estimate and its subtraction. For scale, astroscrappy (L.A.Cosmic) runs
on the same calibrated image, and both cosmic-ray masks are scored against the simulator's truth
(recall of cosmic-ray pixels above 5 sigma; false flags on star cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from repo.exposure import Exposure  # noqa: E402
from stages.characterize.background import estimate_background, subtract_background  # noqa: E402
from stages.characterize.cosmic_rays import find_cosmic_rays, reject_cosmic_rays, repair_cosmic_rays
from stages.isr.calibration_products import (
    combine_bias,
    combine_dark,
    combine_defects,
    combine_flat,
)
from stages.isr.correction import run_isr  # noqa: E402
from stages.simulate import (
    SurveyConfig,
    make_plan,
    make_sky,
    simulate_calibration_frames,
    simulate_raw,
)
from stages.simulate.truth import visit_sources  # noqa: E402


def best_time(func, repeat: int):
    """(result of the last call, best wall time in seconds over ``repeat`` calls)."""
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return result, best


def copy_exposure(exposure: Exposure) -> Exposure:
    return Exposure(exposure.image.copy(), exposure.mask.copy(), exposure.variance.copy())


def score(found, exposure, masks, flat, cores) -> tuple[float, float]:
    """(recall of truth cosmic-ray pixels above 5 sigma, fraction of star-core pixels flagged)."""
    sigma = np.sqrt(exposure.variance)
    unusable = (exposure.mask & exposure.bits("SAT", "BAD")) != 0
    deposit = masks["cosmic_ray_electrons"] / flat
    strong = masks["cosmic_ray"] & (deposit > 5 * sigma) & ~unusable
    return float((found & strong).sum() / strong.sum()), float((found & cores).sum() / cores.sum())


def star_cores(sources, masks, fwhm: float, shape) -> np.ndarray:
    stars = sources[(sources["source_type"] == "star") & (sources["mag"] < 22.0)]
    cores = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for x, y in zip(stars["x"], stars["y"], strict=True):
        x0, x1 = int(max(x - fwhm - 1, 0)), int(min(x + fwhm + 2, shape[1]))
        y0, y1 = int(max(y - fwhm - 1, 0)), int(min(y + fwhm + 2, shape[0]))
        if x0 < x1 and y0 < y1:
            box = (slice(y0, y1), slice(x0, x1))
            cores[box] |= np.hypot(xx[box] - x, yy[box] - y) < fwhm
    return cores & ~ndimage.binary_dilation(masks["cosmic_ray"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="detector size (pixels)")
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--visit", type=int, default=1, help="index of the science visit")
    args = parser.parse_args()

    config = SurveyConfig.from_preset("default", size=args.size, n_detectors=1)
    plan = make_plan(config)
    sky = make_sky(config, plan)
    camera = plan.camera
    visit = plan.visits[args.visit]
    mpix = args.size * args.size / 1e6
    print(f"simulating a {args.size} x {args.size} detector, visit {visit.id} ({visit.band}) ...")

    def frames(kind, band=None):
        n = {"bias": config.n_bias, "dark": config.n_dark, "flat": config.n_flat}[kind]
        return [simulate_calibration_frames(plan, kind, 0, band, i) for i in range(n)]

    bias_raws, dark_raws, flat_raws = frames("bias"), frames("dark"), frames("flat", visit.band)
    raw, _, masks = simulate_raw(plan, sky, visit.id, 0)

    rows = []
    bias, t = best_time(lambda: combine_bias(bias_raws, camera), args.repeat)
    rows.append((f"master bias ({len(bias_raws)} frames)", t))
    dark, t = best_time(lambda: combine_dark(dark_raws, bias, camera), args.repeat)
    rows.append((f"master dark ({len(dark_raws)} frames)", t))
    flat, t = best_time(lambda: combine_flat(flat_raws, bias, dark, camera), args.repeat)
    rows.append((f"master flat ({len(flat_raws)} frames)", t))
    defects = combine_defects(dark, flat)
    exposure, t = best_time(lambda: run_isr(raw, camera, bias, dark, flat, defects), args.repeat)
    rows.append(("ISR", t))

    optical_fwhm = camera.optical_psf_params(0, args.size / 2, args.size / 2, visit.band)[0]
    fwhm = float(np.hypot(visit.conditions.seeing / camera.config.pixel_scale_arcsec, optical_fwhm))
    cr_known, t_known = best_time(lambda: find_cosmic_rays(exposure, fwhm / 2.3548), args.repeat)
    rows.append(("cosmic rays, one pass (PSF known)", t_known))

    def two_pass():
        work = copy_exposure(exposure)
        return reject_cosmic_rays(work, optical_fwhm / 2.3548), work

    ((cr_two, sigma_found), repaired), t_two = best_time(two_pass, args.repeat)
    rows.append(("cosmic rays, two passes + repair", t_two))
    work = copy_exposure(exposure)
    _, t = best_time(lambda: repair_cosmic_rays(copy_exposure(work), cr_known), args.repeat)
    rows.append(("cosmic-ray repair alone", t))
    (model, level), t = best_time(lambda: estimate_background(repaired), args.repeat)
    rows.append(("background (sep, mesh 64)", t))
    (_, _), t = best_time(lambda: estimate_background(repaired, source_sigma=3.0), args.repeat)
    rows.append(("background, source-masked 2nd pass", t))
    _, t = best_time(lambda: subtract_background(copy_exposure(repaired), model), args.repeat)
    rows.append(("background subtraction", t))

    import astroscrappy

    read_noise = float(exposure.metadata["RDNOISE0"])
    (scrappy_mask, _), t_scrappy = best_time(
        lambda: astroscrappy.detect_cosmics(
            exposure.image,
            inmask=(exposure.mask & exposure.bits("SAT", "BAD")) != 0,
            gain=1.0,
            readnoise=read_noise,
            satlevel=np.inf,
            sigclip=4.5,
            objlim=5.0,
        ),
        1,
    )
    rows.append(("astroscrappy (default niter=4), for scale", t_scrappy))

    print(f"\n{'step':44s} {'seconds':>9s} {'s/Mpix':>8s}")
    for name, seconds in rows:
        print(f"{name:44s} {seconds:9.3f} {seconds / mpix:8.3f}")
    chain = sum(s for n, s in rows if n in ("ISR", "cosmic rays, two passes + repair"))
    chain += rows[[n for n, _ in rows].index("background (sep, mesh 64)")][1]
    print(f"{'ISR + cosmic rays + background':44s} {chain:9.3f} {chain / mpix:8.3f}")

    cores = star_cores(visit_sources(plan, sky, visit, 0), masks, fwhm, exposure.shape)
    print(f"\ncosmic rays vs truth (PSF FWHM {fwhm:.2f} px, two-pass sigma {sigma_found:.2f} px):")
    for name, found, seconds in (
        ("ours, one pass, PSF known", cr_known, t_known),
        ("ours, two passes", cr_two, t_two),
        ("astroscrappy", scrappy_mask, t_scrappy),
    ):
        recall, false_rate = score(found, exposure, masks, flat.image, cores)
        print(
            f"  {name:28s} recall {recall:.4f}  star-core pixels flagged {false_rate:.5f}  "
            f"{seconds:.3f} s"
        )


if __name__ == "__main__":
    main()
