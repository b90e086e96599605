"""Tests of the survey simulator against its own truth: noise, flux, headers, cosmic rays, WCS."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import subprocess
import warnings

import galsim
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from repo.dimensions import UNIVERSE
from repo.errors import DrpError, InvalidDataIdError
from repo.instruments.simcam import SimCam
from stages.simulate import (
    REFCAT_COLUMNS,
    TRUTH_COLUMNS,
    SurveyConfig,
    make_plan,
    make_sky,
    masks_from_hdulist,
    masks_to_hdulist,
    psf_at,
    simulate_calibration_frames,
    simulate_raw,
)
from stages.simulate.raw import AMPLIFIER_KEYS, PRIMARY_KEYS, SCIENCE_KEYS, WCS_KEYS
from stages.simulate.render import bleed_columns, sky_image
from stages.simulate.sky import (
    asteroid_positions,
    mag_to_njy,
    star_magnitudes,
    star_positions,
    transient_flux,
)

SEED = 11


@pytest.fixture(scope="module")
def survey():
    config = SurveyConfig.from_preset("tiny", seed=SEED)
    plan = make_plan(config)
    return config, plan, make_sky(config, plan)


@pytest.fixture(scope="module")
def first_raw(survey):
    _, plan, sky = survey
    return simulate_raw(plan, sky, plan.visits[0].id, 0)


def _empty_sky(sky):
    return dataclasses.replace(
        sky,
        stars=sky.stars[:0],
        galaxies=sky.galaxies[:0],
        transients=sky.transients[:0],
        asteroids=sky.asteroids[:0],
    )


def _sky_with_stars(plan, sky, visit, detector, positions, mag):
    """A sky holding only stars of one magnitude at given pixel positions of one raw."""
    c = visit.conditions
    x, y = np.transpose(positions)
    ra, dec = plan.camera.pixel_to_sky(detector, x, y, c.true_ra, c.true_dec, c.true_rotation)
    stars = Table(sky.stars[: len(positions)], copy=True)
    stars["ra"], stars["dec"] = ra, dec
    stars["pm_ra"] = stars["pm_dec"] = 0.0
    for band in "gri":
        stars[f"mag_{band}"] = mag
    stars["is_variable"] = False
    return dataclasses.replace(_empty_sky(sky), stars=stars)


def _overscan_corrected(raw: fits.HDUList, camera: SimCam, detector: int):
    """Assembled data minus each row's serial-overscan mean (ADU), and per-pixel gain."""
    det = camera.detector(detector)
    image = np.empty((det.ny, det.nx))
    gain = np.empty((det.ny, det.nx))
    for amp, hdu in zip(det.amplifiers, raw[1:], strict=True):
        data = hdu.data.astype(float)
        level = data[amp.serial_overscan_slice].mean(axis=1)
        image[amp.detector_slice] = data[amp.data_slice] - level[:, None]
        gain[amp.detector_slice] = amp.gain
    return image, gain


def _reduce(raw, camera, detector, band, exposure_time):
    """Test-side ISR: overscan, bias structure, gain, linearity, dark and flat -> electrons."""
    image, gain = _overscan_corrected(raw, camera, detector)
    electrons = camera.linearize((image - camera.bias_structure(detector)) * gain)
    electrons -= camera.dark_current(detector) * exposure_time
    return electrons / camera.flat(detector, band)


def test_sky_noise_matches_the_gain_read_noise_sky_model(survey):
    _, plan, sky = survey
    camera = plan.camera
    measured = []
    for visit in plan.visits[:2]:
        raw, _, _ = simulate_raw(plan, _empty_sky(sky), visit.id, 1, cosmic_rays=False)
        image, gain = _overscan_corrected(raw, camera, 1)
        expected = sky_image(camera, visit, 1) * camera.flat(1, visit.band)
        expected += camera.dark_current(1) * visit.exposure_time
        model = camera.bias_structure(1) + camera.apply_nonlinearity(expected) / gain
        read_noise = np.empty_like(gain)
        for amp in camera.detector(1).amplifiers:
            read_noise[amp.detector_slice] = amp.read_noise
        n_overscan = camera.config.serial_overscan
        slope = 1 - 2 * camera.config.nonlinearity * expected / camera.config.full_well
        variance = expected * slope**2 / gain**2
        variance += ((read_noise / gain) ** 2 + 1 / 12) * (1 + 1 / n_overscan)
        z = (image - model) / np.sqrt(variance)
        # Level (sky, flat, gain, bias) and noise both as modelled.
        assert abs(z.mean()) < 0.02
        assert z.std() == pytest.approx(1.0, abs=0.02)
        sky_sigma = np.std(image - model)
        model_sigma = np.sqrt(np.mean(variance))
        measured.append(sky_sigma / model_sigma)
        assert sky_sigma / model_sigma == pytest.approx(1.0, abs=0.02)
    print(f"sky noise measured/model: {np.round(measured, 4)}")


def test_isolated_star_flux_in_large_aperture_matches_truth(survey):
    _, plan, sky = survey
    camera = plan.camera
    ratios = []
    for visit in plan.visits:
        positions = [(60.3, 70.6), (205.8, 199.1)]  # near the field centre, and near a corner
        star_sky = _sky_with_stars(plan, sky, visit, 0, positions, 17.0)
        raw, truth, _ = simulate_raw(plan, star_sky, visit.id, 0, cosmic_rays=False)
        electrons = _reduce(raw, camera, 0, visit.band, visit.exposure_time)
        electrons -= sky_image(camera, visit, 0)
        assert len(truth) == 2 and not truth["saturated"].any()
        yy, xx = np.mgrid[0:256, 0:256]
        for star in truth:
            x, y = float(star["x"]), float(star["y"])
            assert (x, y) == pytest.approx(positions[list(truth["id"]).index(star["id"])], abs=1e-6)
            aperture = np.hypot(xx - x, yy - y) < 25.0
            # Fraction of the true PSF inside the aperture (about 0.999).
            canvas = galsim.ImageD(np.zeros((256, 256)), xmin=0, ymin=0, scale=1.0)
            psf_at(camera, visit, 0, x, y).drawImage(
                image=canvas, center=galsim.PositionD(x, y), method="auto"
            )
            enclosed = canvas.array[aperture].sum()
            assert 0.99 < enclosed < 1.0
            ratio = electrons[aperture].sum() / (star["flux_electrons"] * enclosed)
            ratios.append(ratio)
            assert ratio == pytest.approx(1.0, abs=0.01)
            assert star["flux_electrons"] == pytest.approx(
                mag_to_njy(17.0) / visit.conditions.njy_per_electron
            )
    print(f"aperture flux / truth: {np.round(ratios, 4)}")


def test_bright_star_saturates_and_bleeds_conserving_charge(survey):
    _, plan, sky = survey
    camera = plan.camera
    visit = plan.visits[1]
    star_sky = _sky_with_stars(plan, sky, visit, 1, [(128.2, 127.7)], 13.5)
    raw, truth, masks = simulate_raw(plan, star_sky, visit.id, 1, cosmic_rays=False)
    assert truth["saturated"][0]
    sat = masks["saturated"]
    rows, cols = np.nonzero(sat)
    # A bleed trail: much longer along the column (y) than across.
    assert np.ptp(rows) > 3 * np.ptp(cols) and np.ptp(rows) > 20
    assert rows.min() > 0 and rows.max() < 255  # the trail stays on the detector
    # Raw pixels of the trail are at or above SATURATE.
    image = np.hstack(
        [h.data[:256, : h.data.shape[1] - camera.config.serial_overscan] for h in raw[1:]]
    )
    amps = camera.detector(1).amplifiers
    saturate = np.where(
        np.arange(256) < amps[0].width, amps[0].saturation_adu, amps[1].saturation_adu
    )
    assert np.all(image[sat] >= np.broadcast_to(saturate, image.shape)[sat])
    # Charge is conserved by the bleeding: a box around the star holds the truth flux.
    electrons = _reduce(raw, camera, 1, visit.band, visit.exposure_time)
    electrons -= sky_image(camera, visit, 1)
    # Bled charge is no longer where it fell, so compare in detector electrons (before the
    # flat) with the truth flux times the flat-weighted PSF.
    flat = camera.flat(1, visit.band)
    x, y = float(truth["x"][0]), float(truth["y"][0])
    canvas = galsim.ImageD(np.zeros((256, 256)), xmin=0, ymin=0, scale=1.0)
    psf_at(camera, visit, 1, x, y).drawImage(image=canvas, center=galsim.PositionD(x, y))
    expected = truth["flux_electrons"][0] * np.sum(canvas.array * flat)
    box = (electrons * flat)[:, 98:159].sum()
    assert box == pytest.approx(expected, rel=0.005)


def test_headers_are_valid_fits_with_the_documented_keys(survey, first_raw, tmp_path):
    _, plan, _ = survey
    raw, _, _ = first_raw
    visit = plan.visits[0]
    files = {"object": raw}
    files["bias"] = simulate_calibration_frames(plan, "bias", 1)
    files["flat"] = simulate_calibration_frames(plan, "flat", 1, band="r", index=2)
    for kind, hdul in files.items():
        path = tmp_path / f"{kind}.fits"
        hdul.writeto(path)
        primary = hdul[0].header
        assert all(key in primary for key in PRIMARY_KEYS)
        assert primary["OBSTYPE"] == kind and primary["INSTRUME"] == "SimCam"
        assert ("RA" in primary) == (kind == "object")
        for hdu in hdul[1:]:
            assert all(key in hdu.header for key in AMPLIFIER_KEYS)
            assert hdu.data.dtype == np.uint16 and hdu.header["BITPIX"] == 16
            assert all((key in hdu.header) == (kind == "object") for key in WCS_KEYS)
        if shutil.which("fitsverify"):
            out = subprocess.run(["fitsverify", str(path)], capture_output=True, text=True).stdout
            assert "0 warning(s) and 0 error(s)" in out, out
    assert files["bias"][0].header["FILTER"] == f"SimCam-{plan.config.bands[0]}"
    primary = raw[0].header
    assert all(key in primary for key in SCIENCE_KEYS)
    # Ingest makes the same visit record from the header as the plan.
    assert plan.camera.visit_record_from_header(primary) == plan.visit_records()[0]
    assert primary["EXPNUM"] == visit.id and primary["FILTER"] == visit.physical_filter
    assert primary["DATE-OBS"] == visit.datetime_begin and primary["EXPTIME"] == 30.0
    assert Time(primary["DATE-OBS"], scale="utc").mjd == pytest.approx(primary["MJD-OBS"], abs=1e-8)
    # Reported, not true, pointing; and no truth keys.
    assert primary["RA"] == visit.ra != visit.conditions.true_ra
    text = repr(primary) + "".join(repr(h.header) for h in raw[1:])
    for word in ("SEEING", "FWHM", "TRUE", "SKYLEV", "MAGZP", "ZEROPT", "BETA"):
        assert word not in text
    assert "DATE  " not in text and "CHECKSUM" not in text
    hdr = raw["AMP1"].header
    amp = plan.camera.detector(0).amplifiers[1]
    assert hdr["DATASEC"] == f"[1:{amp.width},1:256]" and hdr["DETSEC"] == "[129:256,1:256]"
    assert hdr["GAIN"] == amp.gain and hdr["RDNOISE"] == amp.read_noise
    assert hdr["SATURATE"] == amp.saturation_adu


def test_cosmic_ray_truth_masks_match_the_injected_hits(survey, first_raw):
    _, plan, sky = survey
    camera = plan.camera
    visit = plan.visits[0]
    raw, truth, masks = first_raw
    clean, clean_truth, clean_masks = simulate_raw(plan, sky, visit.id, 0, cosmic_rays=False)
    assert not clean_masks["cosmic_ray"].any()
    with_cr, _ = _overscan_corrected(raw, camera, 0)
    without, gain = _overscan_corrected(clean, camera, 0)
    diff = with_cr - without  # the same noise realization: only the hits differ
    crs = masks["cosmic_ray"]
    assert 10 < crs.sum() < 0.02 * crs.size
    assert np.array_equal(crs, masks["cosmic_ray_electrons"] > 0)
    # Outside the hits (and saturated pixels, where bleeding can move charge) nothing changed.
    untouched = ~crs & ~masks["saturated"]
    assert np.all(diff[untouched] == 0)
    # Every pixel that changed by more than 5 sigma of the sky is a truth cosmic-ray pixel ...
    sigma = 1.4826 * np.median(np.abs(without - np.median(without)))
    changed = np.abs(diff) > 5 * sigma
    assert np.all(crs[changed])
    # ... and every truth pixel with a deposit above 5 sigma (plus rounding) changed that much.
    strong = (masks["cosmic_ray_electrons"] / gain > 5 * sigma + 2) & ~masks["saturated"]
    assert strong.sum() > 10 and np.all(changed[strong])
    # The change is the deposit / gain, to the ADU rounding.
    dep = masks["cosmic_ray_electrons"] / gain
    assert np.abs(diff - dep)[crs & ~masks["saturated"]].max() <= 1.0 + 1e-3 * dep.max()
    assert clean_truth.pformat() == truth.pformat()
    print(f"cosmic rays: {crs.sum()} pixels, {changed.sum()} above 5 sigma")


def _bytes(hdul: fits.HDUList) -> bytes:
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


def test_seed_reproduces_byte_identical_files(survey, first_raw):
    config, plan, _ = survey
    again = SurveyConfig.from_preset("tiny", seed=SEED)
    plan2 = make_plan(again)
    sky2 = make_sky(again, plan2)
    raw2, truth2, masks2 = simulate_raw(plan2, sky2, plan2.visits[0].id, 0)
    assert _bytes(raw2) == _bytes(first_raw[0])
    assert truth2.pformat(max_width=-1, max_lines=-1) == first_raw[1].pformat(
        max_width=-1, max_lines=-1
    )
    # The truth masks are GZIP tile-compressed, and each gzip member records the second it was
    # written: the same headers and the same pixels, bit for bit, are what reproduce.
    written = [fits.HDUList.fromstring(_bytes(masks_to_hdulist(m))) for m in (masks2, first_raw[2])]
    for hdu2, hdu1 in zip(*written, strict=True):
        assert hdu2.header.tostring() == hdu1.header.tostring()
        if hdu1.data is not None:
            assert hdu2.data.tobytes() == hdu1.data.tobytes()
    dark = _bytes(simulate_calibration_frames(config, "dark", 0, index=1))
    assert dark == _bytes(simulate_calibration_frames(again, "dark", 0, index=1))
    other = SurveyConfig.from_preset("tiny", seed=SEED + 1)
    plan3 = make_plan(other)
    raw3, _, _ = simulate_raw(plan3, make_sky(other, plan3), plan3.visits[0].id, 0)
    assert _bytes(raw3) != _bytes(first_raw[0])
    assert dark != _bytes(simulate_calibration_frames(other, "dark", 0, index=1))


def test_raw_wcs_maps_truth_within_the_pointing_error(survey):
    config, plan, sky = survey
    offsets = []
    for visit in plan.visits:
        raw, truth, _ = simulate_raw(plan, sky, visit.id, 1, cosmic_rays=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wcs = WCS(raw["AMP0"].header)
            wcs1 = WCS(raw["AMP1"].header)
        ra, dec = wcs.all_pix2world(truth["x"], truth["y"], 0)
        d_ra = (ra - truth["ra"]) * np.cos(np.radians(truth["dec"])) * 3600
        d_dec = (dec - truth["dec"]) * 3600
        c = visit.conditions
        # The header is off by the stated pointing error (reported minus true) ...
        assert np.abs(d_ra - c.pointing_error_ra).max() < 0.02
        assert np.abs(d_dec - c.pointing_error_dec).max() < 0.02
        # ... which is a realistic few arcsec.
        assert (
            math.hypot(c.pointing_error_ra, c.pointing_error_dec) < 5 * config.pointing_error_arcsec
        )
        offsets.append(math.hypot(c.pointing_error_ra, c.pointing_error_dec))
        # The second amplifier's WCS is the same map shifted by its first column.
        x0 = plan.camera.detector(1).amplifiers[1].x0
        ra1, dec1 = wcs1.all_pix2world(truth["x"] - x0, truth["y"], 0)
        assert np.abs(ra1 - ra).max() * 3.6e6 < 1e-3
    assert max(offsets) > 0.5  # the error is really there
    print(f"pointing errors (arcsec): {np.round(offsets, 2)}")


def test_truth_table_columns_and_values(survey, first_raw):
    _, plan, sky = survey
    raw, truth, _ = first_raw
    visit = plan.visits[0]
    c = visit.conditions
    assert truth.colnames == list(TRUTH_COLUMNS)
    assert truth.meta["visit"] == visit.id and truth.meta["band"] == visit.band
    assert set(truth["source_type"]) >= {"star", "galaxy"}
    assert np.all((truth["x"] >= -0.5) & (truth["x"] < 255.5))
    x, y = plan.camera.sky_to_pixel(
        0, truth["ra"], truth["dec"], c.true_ra, c.true_dec, c.true_rotation
    )
    assert np.abs(x - truth["x"]).max() < 1e-6 and np.abs(y - truth["y"]).max() < 1e-6
    assert np.allclose(truth["flux_electrons"] * c.njy_per_electron, truth["flux_nJy"])
    stars = truth[truth["source_type"] == "star"]
    catalog = sky.stars[np.searchsorted(sky.stars["id"], stars["id"])]
    ra, dec = star_positions(catalog, visit.mjd_mid)
    assert np.allclose(stars["ra"], ra, rtol=0, atol=1e-12)
    assert np.allclose(stars["mag"], star_magnitudes(catalog, visit.band, visit.mjd_mid))
    galaxies = truth[truth["source_type"] == "galaxy"]
    assert np.all(galaxies["disk_hlr"] > 0) and np.all(stars["disk_hlr"] == 0)
    ix = np.rint(truth["x"]).astype(int).clip(0, 255)
    iy = np.rint(truth["y"]).astype(int).clip(0, 255)
    assert np.array_equal(truth["response"], plan.camera.flat(0, visit.band)[iy, ix].astype(float))


def test_truth_masks_round_trip_through_fits(first_raw):
    _, _, masks = first_raw
    back = masks_from_hdulist(fits.HDUList.fromstring(_bytes(masks_to_hdulist(masks))))
    assert set(back) == set(masks)
    for name in masks:
        assert np.array_equal(back[name], masks[name])
    assert masks["bad"].sum() > 0


def test_calibration_frames(survey):
    config, plan, _ = survey
    camera = plan.camera
    amp = camera.detector(0).amplifiers[0]
    bias = simulate_calibration_frames(plan, "bias", 0, index=0)
    image, gain = _overscan_corrected(bias, camera, 0)
    residual = image - camera.bias_structure(0)
    assert abs(residual.mean()) < 0.05
    assert residual[amp.detector_slice].std() == pytest.approx(
        math.sqrt((amp.read_noise / amp.gain) ** 2 + 1 / 12), rel=0.02
    )
    dark = simulate_calibration_frames(plan, "dark", 0, index=0)
    assert dark[0].header["EXPTIME"] == config.dark_time
    image, gain = _overscan_corrected(dark, camera, 0)
    rate = (image - camera.bias_structure(0)) * gain / config.dark_time
    hot = camera.dark_current(0) > 5.0
    assert hot.sum() >= 1
    assert np.median(rate[hot] / camera.dark_current(0)[hot]) == pytest.approx(1.0, abs=0.1)
    flat = simulate_calibration_frames(plan, "flat", 0, band="g", index=0)
    assert flat[0].header["FILTER"] == "SimCam-g"
    image, gain = _overscan_corrected(flat, camera, 0)
    electrons = camera.linearize((image - camera.bias_structure(0)) * gain)
    ratio = electrons / (config.flat_level * camera.flat(0, "g"))
    assert np.median(ratio) == pytest.approx(1.0, abs=0.002)
    # The frames differ from each other (independent noise) and between detectors.
    assert _bytes(simulate_calibration_frames(plan, "bias", 0, index=1)) != _bytes(bias)
    with pytest.raises(DrpError, match="not 'r'"):
        simulate_calibration_frames(plan, "bias", 0, band="r")
    cal = plan.calibrations[0]
    assert _bytes(simulate_calibration_frames(plan, cal.kind, 0, cal.band, cal.index)) == _bytes(
        bias
    )
    with pytest.raises(DrpError, match="flats exist"):
        simulate_calibration_frames(plan, "flat", 0, band="i")
    with pytest.raises(DrpError, match="unknown calibration kind"):
        simulate_calibration_frames(plan, "sky", 0)
    with pytest.raises(DrpError, match="no dark with index 7"):
        simulate_calibration_frames(plan, "dark", 0, index=7)


def test_plan_visits_and_records(survey):
    config, plan, _ = survey
    assert len(plan.visits) == config.n_epochs * len(config.bands)
    assert [v.band for v in plan.visits] == list(config.bands) * config.n_epochs
    ids = [v.id for v in plan.visits]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert all(v.id == v.day_obs * 1000 + v.seq for v in plan.visits)
    fields = set(UNIVERSE["visit"].record_columns)
    for record, visit in zip(plan.visit_records(), plan.visits, strict=True):
        assert set(record) == fields
        assert Time(record["datetime_begin"], scale="utc").mjd == pytest.approx(
            record["mjd"], abs=1e-8
        )
        assert record["airmass"] == pytest.approx(1 / math.cos(math.radians(visit.zenith_distance)))
        assert 1.0 <= record["airmass"] < 2.0
        c = visit.conditions
        zp = plan.camera.filter(visit.band).zero_point + 2.5 * math.log10(30.0) - c.extinction
        assert c.zero_point == pytest.approx(zp)
        assert 0.4 < c.seeing < 2.0
    epochs = sorted({v.day_obs for v in plan.visits})
    assert len(epochs) == config.n_epochs
    assert len(plan.conditions_table()) == len(plan.visits)
    kinds = [cal.kind for cal in plan.calibrations]
    assert kinds.count("bias") == 3 and kinds.count("flat") == 3 * len(config.bands)
    calib = plan.calibration_records()
    assert [r["observation_type"] for r in calib] == kinds
    assert all(r["id"] // 1000 == r["day_obs"] and r["id"] % 1000 > 500 for r in calib)
    assert set(r["id"] for r in calib).isdisjoint(ids)
    nights = [r["id"] for r in plan.day_obs_records()]
    assert nights == sorted({v.day_obs for v in plan.visits})
    with pytest.raises(InvalidDataIdError, match="visit 123"):
        plan.visit(123)
    with pytest.raises(InvalidDataIdError, match="no detector 2"):
        simulate_raw(plan, None, plan.visits[0].id, 2)


def test_config_validation_and_presets():
    tiny = SurveyConfig.from_preset("tiny")
    assert (tiny.n_detectors, tiny.size, tiny.bands, tiny.n_epochs) == (2, 256, ("g", "r"), 2)
    default = SurveyConfig()
    assert (default.n_detectors, default.size, default.bands) == (4, 1024, ("g", "r", "i"))
    scaled = SurveyConfig.from_preset("tiny", n_detectors=3, n_epochs=3, bands=["i"], size=128)
    assert len(make_plan(scaled).visits) == 3 and scaled.camera().config.layout == (2, 2)
    with pytest.raises(DrpError, match="unknown survey preset"):
        SurveyConfig(preset="huge")
    with pytest.raises(DrpError, match="bands"):
        SurveyConfig(bands=("g", "z"))
    with pytest.raises(DrpError, match="size"):
        SurveyConfig(size=101)
    with pytest.raises(DrpError, match="never rises"):
        make_plan(SurveyConfig.from_preset("tiny", dec=60.0))


def test_reference_catalog_is_truth_plus_its_stated_errors(survey):
    _, _, sky = survey
    ref = sky.refcat
    assert ref.colnames == list(REFCAT_COLUMNS)
    for name, (unit, _) in REFCAT_COLUMNS.items():
        assert ref[name].unit == (u.Unit(unit) if unit else None)
    truth = sky.stars[np.searchsorted(sky.stars["id"], ref["id"])]
    assert np.all(truth["mag_r"] < 21.0) and len(ref) > 20
    dra = (ref["ra"] - truth["ra"]) * np.cos(np.radians(truth["dec"])) * 3.6e6 / ref["ra_err"]
    ddec = (ref["dec"] - truth["dec"]) * 3.6e6 / ref["dec_err"]
    dmag = (ref["phot_g_mag"] - truth["mag_g"]) / ref["phot_g_mag_err"]
    for pull in (dra, ddec, dmag):
        assert np.std(pull) == pytest.approx(1.0, abs=0.3)
    assert np.allclose(ref["r_flux"], mag_to_njy(ref["phot_r_mag"]))
    # Stellar colours follow the locus.
    g_r = sky.stars["mag_g"] - sky.stars["mag_r"]
    r_i = sky.stars["mag_r"] - sky.stars["mag_i"]
    assert g_r.min() >= 0.1 and g_r.max() <= 1.5
    assert np.all(np.diff(r_i[np.argsort(g_r)][::10]) > -0.15)
    assert np.corrcoef(g_r, r_i)[0, 1] > 0.9


def test_variables_transients_and_asteroids(survey):
    _, plan, sky = survey
    variables = sky.stars[sky.stars["is_variable"]]
    assert len(variables) == 3 and np.all(sky.refcat["phot_variable_flag"].sum() == 3)
    mjds = np.linspace(60000.0, 60001.0, 200)
    curve = np.array([star_magnitudes(variables, "r", m) for m in mjds])
    assert np.ptp(curve, axis=0) == pytest.approx(variables["var_amplitude_r"], rel=0.05)
    tr = sky.transients
    assert len(tr) == 1
    assert transient_flux(tr, "r", tr["t0"][0] - 11 * tr["tau_rise"][0])[0] == 0.0
    peak_time = tr["t0"][0] + tr["tau_rise"][0] * math.log(
        tr["tau_fall_r"][0] / tr["tau_rise"][0] - 1
    )
    assert transient_flux(tr, "r", peak_time)[0] == pytest.approx(mag_to_njy(tr["peak_mag_r"][0]))
    assert transient_flux(tr, "r", peak_time + 30)[0] < 0.5 * mag_to_njy(tr["peak_mag_r"][0])
    # Each night's asteroid is found on a detector, trailed by rate x exposure time.
    found = 0
    for visit in plan.visits:
        for det in range(2):
            raw, truth, _ = simulate_raw(plan, sky, visit.id, det, cosmic_rays=False)
            for row in truth[truth["source_type"] == "asteroid"]:
                ast = sky.asteroids[sky.asteroids["id"] == row["id"]][0]
                rate = math.hypot(ast["rate_ra"], ast["rate_dec"])
                length = rate * visit.exposure_time / 3600 / 0.2
                assert row["trail_length"] == pytest.approx(length, rel=0.01)
                ra, _ = asteroid_positions(
                    sky.asteroids[sky.asteroids["id"] == row["id"]], visit.mjd_mid
                )
                assert row["ra"] == pytest.approx(ra[0], abs=1e-10)
                found += 1
    assert found >= 1


def test_bleed_conserves_charge_and_respects_full_well():
    image = np.full((50, 3), 100.0)
    image[25, 1] = 1000.0
    image[24, 1] = 600.0
    total = image.sum()
    bleed_columns(image, 300.0)
    assert image.sum() == pytest.approx(total)
    assert image.max() <= 300.0
    assert np.array_equal(image[:, 0], np.full(50, 100.0))
    full = np.flatnonzero(image[:, 1] == 300.0)
    assert np.array_equal(full, np.arange(full[0], full[-1] + 1)) and len(full) >= 6
    # Half the excess goes each way; the half that runs off the end of the column is lost.
    edge = np.zeros((4, 1))
    edge[0, 0] = 1000.0
    bleed_columns(edge, 300.0)
    assert np.array_equal(edge[:, 0], [300.0, 300.0, 50.0, 0.0])


def test_simcam_ingest_items_from_raw_files(survey, first_raw, tmp_path):
    _, plan, _ = survey
    camera = plan.camera
    science = tmp_path / "science.fits"
    first_raw[0].writeto(science)
    flat = tmp_path / "flat.fits"
    simulate_calibration_frames(plan, "flat", 1, band="r", index=1).writeto(flat)
    items = camera.ingest_items([str(science), str(flat)])
    assert [i.dataset_type for i in items] == ["raw", "raw"]
    assert all(
        i.storage_class == "Fits" and i.dimensions == ("instrument", "visit", "detector")
        for i in items
    )
    visit = plan.visits[0]
    assert items[0].data_id == {"instrument": "SimCam", "visit": visit.id, "detector": 0}
    assert items[0].records["visit"] == [plan.visit_records()[0]]
    assert items[0].records["day_obs"] == [{"instrument": "SimCam", "id": visit.day_obs}]
    region = items[0].records["visit_detector_region"][0]
    corners = np.array(json.loads(region["region"]))
    assert corners.tolist() == camera.detector_region(0, visit.ra, visit.dec, visit.rotation_angle)
    # The detector's corners are 256 pixels x 0.2 arcsec apart on the sky (less the distortion).
    side = np.hypot(
        np.diff(corners[:2, 0]) * np.cos(np.radians(corners[0, 1])), np.diff(corners[:2, 1])
    )
    assert side[0] * 3600 == pytest.approx(256 * 0.2, rel=0.02)
    cal = plan.calibration("flat", "r", 1)
    assert items[1].data_id == {"instrument": "SimCam", "visit": cal.id, "detector": 1}
    assert items[1].records["visit"][0]["observation_type"] == "flat"
    assert "visit_detector_region" not in items[1].records
    other = tmp_path / "other.fits"
    fits.PrimaryHDU(header=fits.Header({"INSTRUME": "DECam"})).writeto(other)
    with pytest.raises(DrpError, match="not a SimCam raw"):
        camera.ingest_items([str(other)])


def test_galaxy_shapes_are_fixed_on_the_sky(survey):
    _, plan, sky = survey
    camera = plan.camera
    pa, e = 30.0, 0.5
    beta = np.radians(pa + 90.0)
    angles = []
    for visit in plan.visits[:2]:  # two different rotator angles
        c = visit.conditions
        ra, dec = camera.pixel_to_sky(0, 128.0, 128.0, c.true_ra, c.true_dec, c.true_rotation)
        galaxy = Table(sky.galaxies[:1], copy=True)
        galaxy["ra"], galaxy["dec"] = ra, dec
        for band in "gri":
            galaxy[f"mag_{band}"] = 17.0
            galaxy[f"bulge_fraction_{band}"] = 0.0
        galaxy["disk_hlr"] = 1.0
        galaxy["disk_e1"], galaxy["disk_e2"] = e * np.cos(2 * beta), e * np.sin(2 * beta)
        one = dataclasses.replace(_empty_sky(sky), galaxies=galaxy)
        raw, truth, _ = simulate_raw(plan, one, visit.id, 0, cosmic_rays=False)
        electrons = _reduce(raw, camera, 0, visit.band, visit.exposure_time)
        electrons -= sky_image(camera, visit, 0)
        moments = galsim.hsm.FindAdaptiveMom(galsim.ImageD(electrons[64:192, 64:192]))
        shape = moments.observed_shape
        theta = 0.5 * math.atan2(shape.e2, shape.e1)  # major axis in pixel axes
        x = 128.0 + 10 * np.array([-math.cos(theta), math.cos(theta)])
        y = 128.0 + 10 * np.array([-math.sin(theta), math.sin(theta)])
        ras, decs = camera.pixel_to_sky(0, x, y, c.true_ra, c.true_dec, c.true_rotation)
        east = (ras[1] - ras[0]) * math.cos(math.radians(decs[0]))
        angles.append(math.degrees(math.atan2(east, decs[1] - decs[0])) % 180.0)
        # The PSF rounds the galaxy but it stays clearly elongated.
        assert shape.e > 0.3
        assert truth["disk_e1"][0] == pytest.approx(e * math.cos(2 * beta))
    assert plan.visits[0].rotation_angle != pytest.approx(plan.visits[1].rotation_angle, abs=5)
    assert angles == pytest.approx([pa, pa], abs=2.0)
