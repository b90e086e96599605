"""Test helpers shared by the single-visit processing tests: simulated data with known truth.

Imported by the tests as ``simulated`` (the tests folder is on the path, as for ``stages_toys``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table

from stages.isr.calibration_products import combine_bias, combine_dark, combine_flat
from stages.isr.correction import run_isr
from stages.simulate import simulate_calibration_frames, simulate_raw
from stages.simulate.render import sky_image
from stages.simulate.truth import visit_sources


def isr_with_true_calibrations(plan, sky, visit, detector, cosmic_rays=False):
    """ISR with the camera's true calibrations, minus the true sky: (Exposure, truth, masks).

    What ISR leaves on an empty sky (a fraction of an electron) is measured on a simulation of
    the same raw without sources and subtracted too, so that the image holds the sources alone.
    """
    camera = plan.camera
    raw, truth, masks = simulate_raw(plan, sky, visit.id, detector, cosmic_rays=cosmic_rays)
    empty = dataclasses.replace(
        sky,
        stars=sky.stars[:0],
        galaxies=sky.galaxies[:0],
        transients=sky.transients[:0],
        asteroids=sky.asteroids[:0],
    )
    blank, _, _ = simulate_raw(plan, empty, visit.id, detector, cosmic_rays=False)
    det = camera.detector(detector)
    gain = np.empty((det.ny, det.nx))
    for amp in det.amplifiers:
        gain[amp.detector_slice] = amp.gain
    calibrations = (
        camera.bias_structure(detector) * gain,
        camera.dark_current(detector),
        camera.flat(detector, visit.band),
        camera.defects(detector),
    )
    exposure = run_isr(raw, camera, *calibrations)
    sky_level = sky_image(camera, visit, detector)
    _, offset, _ = sigma_clipped_stats(run_isr(blank, camera, *calibrations).image - sky_level)
    exposure.image = (exposure.image - sky_level - offset).astype(np.float64)
    return exposure, truth, masks


def master_calibrations(plan, detector):
    """Master bias, dark and per-band flats of one detector, combined from simulated frames."""
    config, camera = plan.config, plan.camera

    def frames(kind, band=None):
        n = {"bias": config.n_bias, "dark": config.n_dark, "flat": config.n_flat}[kind]
        return [simulate_calibration_frames(plan, kind, detector, band, i) for i in range(n)]

    bias = combine_bias(frames("bias"), camera)
    dark = combine_dark(frames("dark"), bias, camera)
    flats = {b: combine_flat(frames("flat", b), bias, dark, camera) for b in config.bands}
    return bias, dark, flats


def star_truth(plan, sky, visit, detector):
    """Truth of the stars on a detector with their electrons, photon noise and the FWHM (px).

    Returns (truth table, electrons, noise, fwhm_px): noise is the Poisson noise of the star and
    of the sky within a FWHM-sized aperture, in electrons.
    """
    truth = visit_sources(plan, sky, visit, detector)
    truth = truth[np.asarray(truth["on_detector"]) & (truth["source_type"] == "star")]
    electrons = np.asarray(truth["flux_electrons"], float)
    fwhm_px = visit.conditions.seeing / plan.camera.config.pixel_scale_arcsec
    noise = np.sqrt(electrons + math.pi * fwhm_px**2 * visit.conditions.sky_level)
    return truth, electrons, noise, fwhm_px


def noisy_sources(truth: Table, electrons, noise, sigma, rng: np.random.Generator) -> Table:
    """A source table from truth with centroid noise ``sigma`` (px) and flux noise ``noise``."""
    return Table(
        {
            "x": np.asarray(truth["x"]) + rng.normal(0.0, sigma),
            "y": np.asarray(truth["y"]) + rng.normal(0.0, sigma),
            "xErr": sigma,
            "yErr": sigma,
            "psfFlux": electrons + rng.normal(0.0, noise),
            "psfFluxErr": noise,
        }
    )
