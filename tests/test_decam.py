"""DECam: filters, CCDs, CP header translation, triplet grouping and reading, on the legacypipe
test case 6 fixture (six exposures, cut-down single-CCD CP files with PSFEx models)."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from repo.errors import CorruptDatasetError, DimensionRecordError, DrpError, StorageError
from repo.formatters.fits import read_exposure, write_exposure
from repo.instruments.base import get_instrument
from repo.instruments.decam import (
    CCD_NX,
    CCD_NY,
    DECam,
    group_cp_files,
    mask_from_dq,
    observing_night,
    read_cp_triplet,
    variance_from_weight,
)
from repo.psf import PsfexPsf
from repo.regions import ConvexPolygon

DATA = Path(
    os.environ.get(
        "DRP_DECAM_TC6", Path(__file__).resolve().parents[2] / "shared/data/decam-legacypipe-tc6"
    )
)

#: (file stem, EXPNUM, DETPOS, CCDNUM, band, observing night) of the six fixture exposures.
EXPOSURES = [
    ("c4d_150110_053718", 396388, "S4", 28, "z", 20150109),
    ("c4d_171113_061941", 695773, "S4", 28, "r", 20171112),
    ("c4d_181104_072440", 790643, "S4", 28, "g", 20181103),
    ("c4d_181214_050844", 802955, "S9", 20, "g", 20181213),
    ("c4d_181215_045000", 803277, "S9", 20, "z", 20181214),
    ("c4d_181215_051332", 803291, "S9", 20, "r", 20181214),
]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    assert (DATA / "images").is_dir(), f"DECam fixture not found at {DATA} (set DRP_DECAM_TC6)"
    return DATA


@pytest.fixture(scope="module")
def cp_files(data_dir) -> list[str]:
    files = sorted(str(p) for p in (data_dir / "images").rglob("c4d_*_oo?_*.fits"))
    assert len(files) == 18
    return files


@pytest.fixture(scope="module")
def triplets(cp_files):
    return group_cp_files(cp_files)


@pytest.fixture(scope="module")
def survey_ccds(data_dir) -> Table:
    return Table.read(data_dir / "survey-ccds-1.fits.gz")


def ccds_row(survey_ccds: Table, triplet) -> Table.Row:
    name = os.path.basename(triplet.image)
    rows = [r for r in survey_ccds if str(r["image_filename"]).strip().endswith(name)]
    assert len(rows) == 1
    return rows[0]


def psfex_path(data_dir: Path, triplet) -> Path:
    stem = os.path.basename(triplet.image).split(".")[0]
    (path,) = (data_dir / "calib/psfex").rglob(f"{stem}-psfex.fits")
    return path


def headers(triplet) -> tuple[fits.Header, fits.Header]:
    with fits.open(triplet.image) as hdul:
        return hdul[0].header.copy(), hdul[triplet.extname].header.copy()


# ---------------------------------------------------------------------------------------------
# filters and detectors


def test_registered_by_name():
    assert isinstance(get_instrument("DECam"), DECam)


def test_physical_filters_and_bands():
    records = DECam().physical_filter_records()
    bands = {r["name"]: r["band"] for r in records}
    assert {"g", "r", "i", "z", "Y"} <= set(bands.values())
    assert bands["z_c0004"] == "z" and bands["Y_c0005"] == "Y"
    assert all(r["instrument"] == "DECam" for r in records)
    assert DECam().filter_from_header("g DECam SDSS c0001 4720.0 1520.0").name == "g_c0001"
    with pytest.raises(DimensionRecordError, match="unknown DECam FILTER 'w DECam c0099'"):
        DECam().filter_from_header("w DECam c0099")


def test_detector_records():
    records = DECam().detector_records()
    assert len(records) == 62
    assert [r["id"] for r in records] == list(range(1, 63))
    names = [r["name"] for r in records]
    assert sorted(names) == sorted(
        [f"S{i}" for i in range(1, 32)] + [f"N{i}" for i in range(1, 32)]
    )
    by_name = {r["name"]: r for r in records}
    # CCDNUM <-> DETPOS, as in CP headers (S4 = 28, S9 = 20 in the fixture) and the DECam layout
    assert {n: by_name[n]["id"] for n in ("S29", "S31", "S25", "S1", "S4", "S7", "S9", "N1")} == {
        "S29": 1, "S31": 3, "S25": 4, "S1": 25, "S4": 28, "S7": 31, "S9": 20, "N1": 32,
    }  # fmt: skip
    assert by_name["N31"]["id"] == 62 and by_name["N4"]["id"] == 35
    for r in records:
        assert (r["nx"], r["ny"], r["pixel_size"]) == (CCD_NX, CCD_NY, 15.0)
        assert r["orientation"] == (180.0 if r["name"][0] == "N" else 0.0)
        twin = by_name[("S" if r["name"][0] == "N" else "N") + r["name"][1:]]
        assert (r["focal_plane_x"], r["focal_plane_y"]) == (-twin["focal_plane_x"],
                                                            -twin["focal_plane_y"])  # fmt: skip
    # S4 sits just beside the centre (half a row pitch), on the y axis
    assert by_name["S4"]["focal_plane_x"] == pytest.approx(-0.5 * 2249 * 0.015)
    assert by_name["S4"]["focal_plane_y"] == 0.0
    # no two CCDs overlap (gaps of >= 150 pixels = 2.25 mm), all within DECam's 2.2 deg field
    x = np.array([r["focal_plane_x"] for r in records])
    y = np.array([r["focal_plane_y"] for r in records])
    half_w, half_h = CCD_NX * 0.015 / 2, CCD_NY * 0.015 / 2
    apart_x = np.abs(x[:, None] - x[None, :]) >= 2 * half_w + 2.25
    apart_y = np.abs(y[:, None] - y[None, :]) >= 2 * half_h + 2.25
    assert np.all(apart_x | apart_y | np.eye(62, dtype=bool))
    corner_radius_deg = np.hypot(np.abs(x) + half_w, np.abs(y) + half_h) / 0.015 * 0.2639 / 3600
    assert 1.0 < corner_radius_deg.max() < 1.2


# ---------------------------------------------------------------------------------------------
# header translation


def test_translation_of_all_six_exposures(triplets, survey_ccds):
    assert len(triplets) == 6
    inst = DECam()
    for triplet, (stem, expnum, detpos, ccdnum, band, night) in zip(
        triplets, EXPOSURES, strict=True
    ):
        primary, ext = headers(triplet)
        name = os.path.basename(triplet.image)
        # the expectations above agree with the file names and headers ...
        assert name == f"{stem}_ooi_{band}_ls9.{detpos}.fits"
        assert (primary["EXPNUM"], ext["CCDNUM"], ext["DETPOS"].strip()) == (expnum, ccdnum, detpos)
        assert int(primary["NITE"]) == night
        assert primary["DTCALDAT"].replace("-", "") == str(night)
        # ... and the translation gives them back
        info = inst.translate_header(primary, ext)
        assert (info["instrument"], info["visit"], info["detector"]) == ("DECam", expnum, ccdnum)
        assert (info["band"], info["day_obs"]) == (band, night)
        assert info["physical_filter"].startswith(band + "_c000")
        assert (triplet.visit, triplet.detector, triplet.extname) == (expnum, ccdnum, detpos)
        visit = info["visit_record"]
        row = ccds_row(survey_ccds, triplet)
        assert visit["id"] == expnum == row["expnum"]
        assert (visit["physical_filter"], visit["band"], visit["day_obs"]) == (
            info["physical_filter"], band, night,
        )  # fmt: skip
        assert visit["exposure_time"] == pytest.approx(float(row["exptime"]))
        assert visit["mjd"] == pytest.approx(float(row["mjd_obs"]), abs=1e-8)
        assert visit["airmass"] == pytest.approx(float(row["airmass"]), abs=1e-6)
        assert visit["datetime_begin"] == primary["DATE-OBS"]
        assert Time(visit["datetime_begin"]).mjd == pytest.approx(visit["mjd"], abs=1e-6)
        assert visit["target"] == str(row["object"]).strip() == primary["OBJECT"]
        assert visit["rotation_angle"] == 0.0
        # boresight: the pointing RA/DEC, as survey-ccds ra_bore/dec_bore
        assert visit["ra"] == pytest.approx(float(row["ra_bore"]), abs=1e-9)
        assert visit["dec"] == pytest.approx(float(row["dec_bore"]), abs=1e-9)
        assert set(visit) == {
            "instrument", "id", "physical_filter", "band", "day_obs", "exposure_time", "ra",
            "dec", "rotation_angle", "datetime_begin", "mjd", "airmass", "target", "region",
            "observation_type",
        }  # fmt: skip
        assert visit["observation_type"] == "science" and primary["OBSTYPE"].strip() == "object"
        assert info["detector_record"]["name"] == detpos
        assert info["detector_record"]["id"] == ccdnum


def test_observing_night_rolls_over_at_local_noon():
    # CTIO mean local noon is 16:43 UTC
    assert observing_night(Time("2018-12-15T16:30:00", scale="utc")) == 20181214
    assert observing_night(Time("2018-12-15T16:55:00", scale="utc")) == 20181215
    assert observing_night(Time("2018-12-15T05:13:32", scale="utc")) == 20181214
    assert observing_night(Time("2019-01-01T02:00:00", scale="utc")) == 20181231


@pytest.mark.parametrize(
    "where, key, value, message",
    [
        ("primary", "INSTRUME", "Mosaic3", "not a DECam header"),
        ("primary", "EXPNUM", "396388", "EXPNUM must be an integer"),
        ("primary", "FILTER", "solid plate 0.0 0.0", "unknown DECam FILTER 'solid plate"),
        ("primary", "DATE-OBS", "yesterday", "DATE-OBS 'yesterday'"),
        ("primary", "EXPTIME", "long", "EXPTIME must be a number"),
        ("ext", "CCDNUM", 63, "63 is not a DECam science CCD"),
        ("primary", "OBSTYPE", "focus", "unknown DECam OBSTYPE 'focus'"),
        ("ext", "DETPOS", "N4", "CCDNUM 28 is S4 but the header says DETPOS='N4'"),
    ],
)
def test_translation_errors(triplets, where, key, value, message):
    primary, ext = headers(triplets[0])
    (primary if where == "primary" else ext)[key] = value
    with pytest.raises(DimensionRecordError, match=re.escape(message)):
        DECam().translate_header(primary, ext)


def test_visit_and_detector_regions_contain_the_cutout(triplets):
    inst = DECam()
    for triplet in triplets:
        primary, ext = headers(triplet)
        info = inst.translate_header(primary, ext)
        exposure = read_cp_triplet(triplet)
        ny, nx = exposure.shape
        ra, dec = exposure.wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        visit_region = ConvexPolygon.from_json(info["visit_record"]["region"])
        assert visit_region.contains(ra, dec)
        bore = (info["visit_record"]["ra"], info["visit_record"]["dec"])
        inside = [
            d for d in range(1, 63)
            if ConvexPolygon.from_radec(*np.array(inst.detector_region(d, *bore)).T).contains(
                ra, dec)
        ]  # fmt: skip
        assert inside == [triplet.detector]  # the layout model puts the cutout on its own CCD


# ---------------------------------------------------------------------------------------------
# grouping


def test_grouping(cp_files, triplets):
    for t in triplets:
        stem = os.path.basename(t.image).replace("_ooi_", "_oo?_")
        assert os.path.basename(t.weight) == stem.replace("?", "w")
        assert os.path.basename(t.dq) == stem.replace("?", "d")
    assert [t.visit for t in triplets] == sorted(e[1] for e in EXPOSURES)
    assert group_cp_files(list(reversed(cp_files))) == triplets


def test_grouping_errors(cp_files, data_dir, tmp_path):
    image, weight = cp_files[1], cp_files[2]  # ooi and oow of the first exposure
    assert "_ooi_" in image and "_oow_" in weight
    with pytest.raises(
        DrpError, match=re.escape(image) + ".*data-quality map \\(ood\\) is missing"
    ):
        group_cp_files([image, weight])
    psf = str(next((data_dir / "calib/psfex").rglob("*.fits")))
    with pytest.raises(DrpError, match=re.escape(psf) + ": not a DECam CP file name"):
        group_cp_files([*cp_files, psf])
    # CP-named files whose headers are not DECam InstCal, or that disagree
    for member in (image, weight, cp_files[0]):
        shutil.copy(member, tmp_path / os.path.basename(member))
    fake = tmp_path / os.path.basename(weight)
    with fits.open(fake, mode="update") as hdul:
        hdul[0].header["EXPNUM"] = 1
    with pytest.raises(DrpError, match=re.escape(str(fake)) + ".*do not match"):
        group_cp_files(sorted(str(p) for p in tmp_path.iterdir()))
    with fits.open(fake, mode="update") as hdul:
        hdul[0].header["INSTRUME"] = "Mosaic3"
    with pytest.raises(DrpError, match=re.escape(str(fake)) + ": not a DECam file"):
        group_cp_files(sorted(str(p) for p in tmp_path.iterdir()))


# ---------------------------------------------------------------------------------------------
# reading


def test_pixels_variance_and_mask(triplets):
    counts = {}
    for triplet in triplets:
        exposure = read_cp_triplet(triplet)
        image = fits.getdata(triplet.image, triplet.extname)
        weight = fits.getdata(triplet.weight, triplet.extname)
        dq = fits.getdata(triplet.dq, triplet.extname)
        assert exposure.image.dtype == np.float32 and np.array_equal(exposure.image, image)
        good = weight > 0
        assert good.sum() > 0.7 * good.size
        assert np.array_equal(exposure.variance[good], np.float32(1) / weight[good])
        assert np.all(np.isposinf(exposure.variance[~good]))
        mask = exposure.mask

        def plane(name, mask=mask, exposure=exposure):
            return (mask & exposure.bit(name)) != 0

        assert np.array_equal(plane("SAT"), (dq == 3) | (dq == 4))  # saturated + bleed trail
        assert np.array_equal(plane("BAD"), dq == 1)
        assert np.array_equal(plane("NO_DATA"), ~good)
        assert not plane("SUSPECT").any() and not plane("CR").any()
        assert np.array_equal(mask == 0, (dq == 0) & good)
        counts[triplet.visit] = tuple(int(plane(p).sum()) for p in ("SAT", "BAD", "NO_DATA"))
    # pixel counts of the fixture (dq codes 3 + 4, code 1, weight <= 0)
    assert counts == {
        396388: (1692, 0, 1692),
        695773: (1605, 0, 1605),
        790643: (1760, 1, 1761),
        802955: (2075, 0, 2075),
        803277: (1383, 0, 1383),
        803291: (1397, 0, 1397),
    }


def test_dq_codes_and_bits_mapping():
    planes = {"BAD": 1, "SAT": 2, "INTRP": 4, "CR": 8, "SUSPECT": 128, "NO_DATA": 256,
              "STREAK": 512}  # fmt: skip
    codes = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 42])
    expected = [0, 1, 256, 2, 2, 8, 128, 128, 512, 128, 128]
    assert list(mask_from_dq(codes, "V4.8.2a")) == expected
    bits = np.array([0, 1, 2, 4, 16, 64, 128, 1 | 16, 256, 2 | 512])
    expected = [0, 1, 2, 4, 8, 2, 128, 1 | 8, 128, 2 | 128]
    assert list(mask_from_dq(bits, "V3.3.1")) == expected
    assert planes["SUSPECT"] == 128  # the default plane numbering the expectations use
    variance = variance_from_weight(np.array([4.0, 0.0, -1.0, np.nan], np.float32))
    assert variance.dtype == np.float32
    assert list(variance) == [0.25, np.inf, np.inf, np.inf]


def _manual_tpv(header: fits.Header, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """The TPV projection written out by hand (the DECam CP convention), zero-based pixels."""
    dx, dy = x + 1 - header["CRPIX1"], y + 1 - header["CRPIX2"]
    u = header["CD1_1"] * dx + header["CD1_2"] * dy
    v = header["CD2_1"] * dx + header["CD2_2"] * dy

    def poly(axis, a, b):
        r = np.hypot(a, b)
        terms = [1, a, b, r, a * a, a * b, b * b, a**3, a * a * b, a * b * b, b**3]
        return sum(header.get(f"PV{axis}_{k}", 0.0) * t for k, t in enumerate(terms))

    xi, eta = np.radians(poly(1, u, v)), np.radians(poly(2, v, u))
    ra0, dec0 = np.radians(header["CRVAL1"]), np.radians(header["CRVAL2"])
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = np.degrees(ra0 + np.arctan2(xi, denom)) % 360
    dec = np.degrees(np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom)))
    return ra, dec


def test_wcs_is_the_cp_tpv_solution(triplets):
    rng = np.random.default_rng(0)
    centres = []
    for triplet in triplets:
        exposure = read_cp_triplet(triplet)
        _, ext = headers(triplet)
        ny, nx = exposure.shape
        x, y = rng.uniform(-0.5, nx - 0.5, 500), rng.uniform(-0.5, ny - 0.5, 500)
        ra, dec = exposure.wcs.pixel_to_world_values(x, y)
        ra_ref, dec_ref = _manual_tpv(ext, x, y)
        assert np.abs(ra - ra_ref).max() * 3600 < 1e-6
        assert np.abs(dec - dec_ref).max() * 3600 < 1e-6
        # the centre vs the linear CRVAL + CD (p - CRPIX) position: they differ by the TPV
        # distortion, a few arcsec here
        c_ra, c_dec = exposure.wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        keys = ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")
        linear = {**{k: ext[k] for k in keys}, "PV1_1": 1.0, "PV2_1": 1.0}
        l_ra, l_dec = _manual_tpv(
            fits.Header(linear), np.array((nx - 1) / 2), np.array((ny - 1) / 2)
        )
        offset = math.hypot((c_ra - l_ra) * math.cos(math.radians(c_dec)), c_dec - l_dec) * 3600
        assert 1.0 < offset < 6.0
        centres.append((c_ra, c_dec))
    # all six cut-outs are centred on the same star: the TPV centres agree to 0.3"
    centres = np.array(centres)
    spread = (centres.max(axis=0) - centres.min(axis=0)) * 3600
    spread[0] *= math.cos(math.radians(centres[0, 1]))
    assert np.all(spread < 0.3)


def test_wcs_puts_the_gaia_star_on_the_image_star(triplets, data_dir):
    """The one Gaia star in the cut-outs (G = 10.5, saturated) lands within 1 pixel of the star.

    x: mean column of the saturated pixels (the bleed trail runs along y, symmetric in x);
    y: flux-weighted centroid of the unmasked wings in columns 10-20 pixels either side.
    """
    gaia = Table.read(data_dir / "gaia/chunk-03687.fits")
    for triplet in triplets:
        exposure = read_cp_triplet(triplet)
        ny, nx = exposure.shape
        gx, gy = exposure.wcs.world_to_pixel_values(gaia["ra"], gaia["dec"])
        inside = (gx > -0.5) & (gx < nx - 0.5) & (gy > -0.5) & (gy < ny - 0.5)
        assert inside.sum() == 1 and gaia["phot_g_mean_mag"][inside][0] < 11
        sat = (exposure.mask & exposure.bit("SAT")) != 0
        x_star = np.nonzero(sat)[1].mean()
        good = exposure.mask == 0
        image = exposure.image - np.median(exposure.image[good])
        yy, xx = np.mgrid[:ny, :nx]
        y_star = ny / 2
        for _ in range(50):
            wings = good & (np.abs(xx - x_star) >= 10) & (np.abs(xx - x_star) <= 20)
            weights = np.where(wings & (np.abs(yy - y_star) <= 20), image, 0.0)
            y_star = (weights * yy).sum() / weights.sum()
        assert abs(x_star - gx[inside][0]) < 1.0
        assert abs(y_star - gy[inside][0]) < 1.0


def test_psfex_fwhm_matches_the_cp_seeing(triplets, survey_ccds, data_dir):
    """PSFEx model FWHM (adaptive moments) vs the CP's median stellar FWHM (header FWHM, the
    survey-ccds ``fwhm``): within 8% (measured 1-6%)."""
    for triplet in triplets:
        exposure = read_cp_triplet(triplet, psfex=psfex_path(data_dir, triplet))
        assert isinstance(exposure.psf, PsfexPsf)
        kernel = exposure.psf.kernel_image(50, 50)
        assert kernel.shape == (63, 63) and kernel.sum() == pytest.approx(1.0)
        assert np.unravel_index(np.argmax(kernel), kernel.shape) == (31, 31)
        fwhm = exposure.psf.fwhm(50, 50)
        header_fwhm = exposure.metadata["FWHM"]
        assert header_fwhm == pytest.approx(float(ccds_row(survey_ccds, triplet)["fwhm"]), 1e-6)
        assert fwhm == pytest.approx(header_fwhm, rel=0.08)
        # over a whole CCD the model changes, but not wildly
        far = exposure.psf.fwhm(-900, 3000)
        assert far == pytest.approx(fwhm, rel=0.2)


def test_photo_calib_from_the_ccd_zero_point(triplets, survey_ccds):
    """With legacypipe's ccdzpt, the pixel noise in nanomaggies matches survey-ccds ``sig1``."""
    for triplet in triplets:
        row = ccds_row(survey_ccds, triplet)
        exposure = read_cp_triplet(triplet, zero_point=float(row["ccdzpt"]))
        expected_zp = float(row["ccdzpt"]) + 2.5 * math.log10(float(row["exptime"]))
        assert exposure.photo_calib.zero_point == pytest.approx(expected_zp, abs=1e-9)
        good = np.isfinite(exposure.variance)
        noise = np.median(np.sqrt(exposure.variance[good])) * exposure.photo_calib.calibration_mean
        assert 0.9 < (noise / 3631.0) / float(row["sig1"]) < 1.15
        assert read_cp_triplet(triplet).photo_calib is None


def test_metadata_and_exact_round_trip(triplets, data_dir, tmp_path):
    triplet = triplets[0]
    exposure = read_cp_triplet(triplet, psfex=psfex_path(data_dir, triplet), zero_point=24.9)
    meta = exposure.metadata
    assert (meta["EXPNUM"], meta["CCDNUM"], meta["DETPOS"]) == (396388, 28, "S4")
    assert meta["FILTER"] == "z DECam SDSS c0004 9260.0 1520.0" and meta["PLVER"] == "V4.8.2a"
    assert isinstance(meta["GAINA"], float) and meta["CPIMAGE"] == os.path.basename(triplet.image)
    data = write_exposure(exposure)
    back = read_exposure(data, "mem://decam")
    assert back.psf == exposure.psf and back.photo_calib == exposure.photo_calib
    assert list(back.metadata.items()) == list(meta.items())
    for name in ("image", "mask", "variance"):
        assert np.array_equal(getattr(back, name), getattr(exposure, name))
    x, y = np.meshgrid(np.linspace(-10, 110, 40), np.linspace(-10, 110, 40))
    assert np.array_equal(
        np.array(back.wcs.pixel_to_world_values(x, y)),
        np.array(exposure.wcs.pixel_to_world_values(x, y)),
    )
    with fits.open(io.BytesIO(data)) as hdul:
        assert hdul["IMAGE"].header["CTYPE1"] == "RA---TPV"
    if shutil.which("fitsverify"):
        path = tmp_path / "decam.fits"
        path.write_bytes(data)
        out = subprocess.run(["fitsverify", str(path)], capture_output=True, text=True).stdout
        assert "Verification found 0 warning(s) and 0 error(s)" in out, out


def test_read_errors(triplets, data_dir, tmp_path):
    with pytest.raises(DrpError, match="no extension 'N5'"):
        read_cp_triplet(triplets[0], hdu="N5")
    other = psfex_path(data_dir, triplets[3])  # S9 of another exposure
    with pytest.raises(DrpError, match="no PSFEx model for ccdname='S4', expnum=396388"):
        read_cp_triplet(triplets[0], psfex=other)
    # a truncated weight map, then a missing one
    weight = tmp_path / os.path.basename(triplets[0].weight)
    weight.write_bytes(Path(triplets[0].weight).read_bytes()[:-5000])
    broken = dataclasses.replace(triplets[0], weight=str(weight))
    with pytest.raises(CorruptDatasetError, match=re.escape(str(weight)) + ": .*truncated"):
        read_cp_triplet(broken)
    weight.unlink()
    with pytest.raises(StorageError, match=re.escape(str(weight)) + ": no such file"):
        read_cp_triplet(broken)


def test_ingest_items_build_the_exposures(cp_files, triplets):
    items = DECam().ingest_items(cp_files)
    assert [item.data_id["visit"] for item in items] == [t.visit for t in triplets]
    for item, triplet in zip(items, triplets, strict=True):
        assert item.dataset_type == "instcal" and item.storage_class == "Exposure"
        assert item.data_id == {"instrument": "DECam", "visit": triplet.visit,
                                "detector": triplet.detector}  # fmt: skip
        assert item.sources == (triplet.image, triplet.weight, triplet.dq)
        assert item.records["visit"][0]["id"] == triplet.visit
        assert item.records["day_obs"][0]["id"] == item.records["visit"][0]["day_obs"]
        (footprint,) = item.records["visit_detector_region"]
        assert (footprint["visit"], footprint["detector"]) == (triplet.visit, triplet.detector)
        region = ConvexPolygon.from_json(footprint["region"])
        exposure = read_cp_triplet(triplet)
        ny, nx = exposure.shape
        yy, xx = np.mgrid[0:ny:10, 0:nx:10]
        assert np.all(region.contains(*exposure.wcs.pixel_to_world_values(xx, yy)))
        assert region.area_sr * (180 / math.pi * 3600) ** 2 == pytest.approx(
            nx * ny * 0.2639**2, rel=0.02
        )
    exposure = items[0].make()
    assert np.array_equal(exposure.image, read_cp_triplet(triplets[0]).image)


def test_ingest_into_a_repository(cp_files, tmp_path):
    from repo.ingest import ingest
    from repo.repository import Repository

    repository = Repository.create(str(tmp_path / "repo"))
    refs = ingest(repository, cp_files, run="DECam/raw")
    assert len(refs) == 6
    exposure = repository.get(
        "instcal", {"instrument": "DECam", "visit": 803291, "detector": 20}, collections="DECam/raw"
    )
    assert exposure.metadata["EXPNUM"] == 803291 and exposure.shape == (101, 101)
    assert exposure.wcs is not None
