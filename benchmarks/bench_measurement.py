"""Benchmark PSF determination, detection and measurement on a default-preset detector.

Run by hand; prints figures, asserts nothing::

    python benchmarks/bench_measurement.py              # default preset, visit 0, detector 0
    python benchmarks/bench_measurement.py --repeat 5

The image: one simulated raw of the ``default`` survey preset (1024 x 1024; no cosmic rays, as
after cosmic-ray rejection), reduced by the
project's ISR with the camera's true calibrations, minus the true sky. Timed, in seconds per
megapixel (best of ``--repeat``):

1. ``detect_and_measure`` without a PSF (the first pass that finds the PSF stars), and the time
   of each of its parts (sep detection, Kron, half-light radius, windowed centroids, apertures,
   adaptive moments);
2. ``determine_psf`` (star selection, moment fit over the Moffat-index grid, validation);
3. ``detect_and_measure`` with the PSF (adds PSF fluxes, and the kernel cache's rendering on
   first use);
4. SExtractor (Debian ``source-extractor``) on the same image with the same variance plane
   (``WEIGHT_TYPE MAP_VAR``), threshold, filter and apertures, background off (the image is
   already background-subtracted), measuring isophotal and windowed centroids, second moments,
   the same apertures, AUTO flux and half-light radius; wall time of the process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import sep
from astropy.io import fits
from astropy.stats import sigma_clipped_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from stages.characterize.psf_determination import determine_psf, optical_field  # noqa: E402
from stages.isr.correction import run_isr  # noqa: E402
from stages.measure.measurement import (  # noqa: E402
    MeasurementConfig,
    aperture_fluxes,
    detect_and_measure,
    detect_sources,
    kron_fluxes,
    windowed_centroids,
)
from stages.measure.moments import adaptive_moments  # noqa: E402
from stages.measure.psf_flux import psf_fluxes  # noqa: E402
from stages.simulate import SurveyConfig, make_plan, make_sky, simulate_raw  # noqa: E402
from stages.simulate.render import sky_image  # noqa: E402


def calibrated_detector(preset: str, visit_index: int, detector: int, seed: int):
    """A reduced, sky-subtracted detector image of the simulated survey, and its truth."""
    config = SurveyConfig.from_preset(preset, seed=seed)
    plan = make_plan(config)
    sky = make_sky(config, plan)
    visit = plan.visits[visit_index]
    camera = plan.camera
    raw, truth, _ = simulate_raw(plan, sky, visit.id, detector, cosmic_rays=False)
    det = camera.detector(detector)
    gain = np.empty((det.ny, det.nx))
    for amp in det.amplifiers:
        gain[amp.detector_slice] = amp.gain
    exposure = run_isr(
        raw,
        camera,
        camera.bias_structure(detector) * gain,
        camera.dark_current(detector),
        camera.flat(detector, visit.band),
        camera.defects(detector),
    )
    image = exposure.image - sky_image(camera, visit, detector)
    _, median, _ = sigma_clipped_stats(image)
    exposure.image = (image - median).astype(np.float64)
    return plan, visit, exposure, truth


def best_time(function, repeat: int) -> tuple[float, object]:
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def part_times(exposure, repeat: int) -> dict[str, float]:
    """Seconds of each part of the measurement, on the exposure's own detections."""
    config = MeasurementConfig()
    image, variance = exposure.image, exposure.variance
    times = {}
    times["sep detection"], (objects, _) = best_time(
        lambda: detect_sources(image, variance, None, config), repeat
    )
    times["Kron radius + flux"], kron = best_time(
        lambda: kron_fluxes(image, variance, objects), repeat
    )
    normflux = np.where(kron["kronFlux"] > 0, kron["kronFlux"], objects["flux"])
    rmax = np.maximum(6.0 * objects["a"], 3.0)
    times["half-light radius"], (radius, _) = best_time(
        lambda: sep.flux_radius(image, objects["x"], objects["y"], rmax, 0.5, normflux=normflux),
        repeat,
    )
    times["windowed centroids"], (x, y, _) = best_time(
        lambda: windowed_centroids(image, objects["x"], objects["y"], radius), repeat
    )
    times["apertures (6 radii)"], _ = best_time(
        lambda: aperture_fluxes(image, variance, x, y, config.aperture_radii), repeat
    )
    times["adaptive moments"], _ = best_time(lambda: adaptive_moments(image, x, y), repeat)
    if exposure.psf is not None:
        times["PSF fluxes"], _ = best_time(
            lambda: psf_fluxes(image, variance, x, y, exposure.psf), repeat
        )
    return times


SEXTRACTOR_PARAMS = """NUMBER
X_IMAGE
Y_IMAGE
XWIN_IMAGE
YWIN_IMAGE
X2_IMAGE
Y2_IMAGE
XY_IMAGE
A_IMAGE
B_IMAGE
THETA_IMAGE
FLUX_APER(6)
FLUXERR_APER(6)
KRON_RADIUS
FLUX_AUTO
FLUXERR_AUTO
FLUX_RADIUS
FLAGS
"""


def time_sextractor(exposure, workdir: str, repeat: int) -> tuple[float, int]:
    """Wall time of source-extractor on the image with its variance map, and its source count."""
    image_path = os.path.join(workdir, "image.fits")
    var_path = os.path.join(workdir, "var.fits")
    fits.writeto(image_path, exposure.image.astype(np.float32), overwrite=True)
    fits.writeto(var_path, exposure.variance.astype(np.float32), overwrite=True)
    with open(os.path.join(workdir, "bench.param"), "w") as handle:
        handle.write(SEXTRACTOR_PARAMS)
    with open(os.path.join(workdir, "bench.conv"), "w") as handle:
        handle.write("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
    diameters = ",".join(str(2 * r) for r in MeasurementConfig().aperture_radii)
    command = [
        "source-extractor", image_path,
        "-c", "/dev/null",
        "-CATALOG_NAME", os.path.join(workdir, "image.cat"),
        "-CATALOG_TYPE", "FITS_1.0",
        "-PARAMETERS_NAME", os.path.join(workdir, "bench.param"),
        "-FILTER_NAME", os.path.join(workdir, "bench.conv"),
        "-DETECT_THRESH", str(MeasurementConfig().threshold),
        "-DETECT_MINAREA", str(MeasurementConfig().min_area),
        "-DEBLEND_NTHRESH", "32", "-DEBLEND_MINCONT", "0.005", "-CLEAN", "N",
        "-WEIGHT_TYPE", "MAP_VAR", "-WEIGHT_IMAGE", var_path,
        "-BACK_TYPE", "MANUAL", "-BACK_VALUE", "0.0",
        "-PHOT_APERTURES", diameters, "-PHOT_AUTOPARAMS", "2.5,3.5",
        "-SATUR_LEVEL", "1e9", "-GAIN", "0", "-VERBOSE_TYPE", "QUIET",
        "-CHECKIMAGE_TYPE", "NONE", "-STARNNW_NAME", "/dev/null",
    ]  # fmt: skip
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=workdir, capture_output=True)
        best = min(best, time.perf_counter() - start)
    n = len(fits.getdata(os.path.join(workdir, "image.cat"), 1))
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--visit-index", type=int, default=0)
    parser.add_argument("--detector", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    plan, visit, exposure, truth = calibrated_detector(
        args.preset, args.visit_index, args.detector, args.seed
    )
    mpix = exposure.image.size / 1e6
    print(
        f"image: {args.preset} preset, visit {visit.id} ({visit.band}), detector "
        f"{args.detector}, {exposure.shape[1]} x {exposure.shape[0]} ({mpix:.2f} Mpix), "
        f"{len(truth)} truth sources; simulated and reduced in {time.perf_counter() - start:.1f} s"
    )

    first_time, first = best_time(lambda: detect_and_measure(exposure), args.repeat)
    optical = optical_field(plan.camera, args.detector, visit.band, exposure.shape)
    psf_time, result = best_time(lambda: determine_psf(exposure, first, optical), args.repeat)
    exposure.psf = result.psf
    # First call with a fresh model includes drawing the kernel cache's nodes.
    cold_start = time.perf_counter()
    detect_and_measure(exposure)
    cold = time.perf_counter() - cold_start
    warm, catalog = best_time(lambda: detect_and_measure(exposure), args.repeat)

    print(f"\n{len(first)} sources; PSF from {result.n_used} stars ({result.n_reserved} reserved)")
    print(f"PSF: {result.summary()}")
    print("\nstage                                   seconds   s/Mpix")
    rows = [
        ("detect + measure, no PSF", first_time),
        ("PSF determination", psf_time),
        ("detect + measure with PSF (cold cache)", cold),
        ("detect + measure with PSF (warm)", warm),
    ]
    for name, seconds in rows:
        print(f"{name:<38} {seconds:8.3f} {seconds / mpix:8.3f}")
    total = first_time + psf_time + cold
    print(f"{'total (first pass + PSF + cold pass)':<38} {total:8.3f} {total / mpix:8.3f}")

    print("\nparts of a measurement pass (with PSF)  seconds")
    for name, seconds in part_times(exposure, args.repeat).items():
        print(f"  {name:<36} {seconds:8.4f}")

    if shutil.which("source-extractor") is None:
        print("\nsource-extractor not installed: no comparison")
        return
    with tempfile.TemporaryDirectory() as workdir:
        se_time, n_se = time_sextractor(exposure, workdir, args.repeat)
    print(
        f"\nSExtractor (same image, variance map, apertures, AUTO; no PSF fit): "
        f"{se_time:.3f} s = {se_time / mpix:.3f} s/Mpix, {n_se} sources "
        f"(ours: {len(catalog)} sources, {warm:.3f} s)"
    )


if __name__ == "__main__":
    main()
