"""Calibrated images of other surveys: real 2MASS atlas tiles of M17 through drp ingest and the
drp-image pipeline, and SDSS and Spitzer (Galactic WCS) images made here with their surveys'
header conventions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.coordinates import SkyCoord
from astropy.io import fits
from click.testing import CliRunner

from cli.main import cli
from repo.errors import DimensionRecordError
from repo.instruments.imagers import NANOMAGGY_NJY, Sdss, Spitzer, TwoMass
from repo.regions import ConvexPolygon
from repo.repository import Repository

M17 = Path(__file__).resolve().parents[2] / "shared" / "data" / "2mass-m17"
TILES = sorted(M17.glob("aK_asky_*.fits.gz"))[:2]


def drp(*args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def twomass(tmp_path_factory) -> Repository:
    assert len(TILES) == 2, f"2MASS tiles not found in {M17}"
    root = tmp_path_factory.mktemp("tm") / "repo"
    drp("create", root)
    out = drp("ingest", root, *TILES, "--run", "2MASS/m17").output
    assert "ingested 2 dataset(s) from 2 file(s) into 2MASS/m17: 2 image" in out
    drp("run", root, "drp-image#singleFrame", "-i", "2MASS/m17", "--output", "2MASS/sfp", "-j", "1")
    return Repository(str(root))


def test_2mass_tiles_ingest_with_their_calibration(twomass):
    visits = {r["id"]: r for r in twomass.query_dimension_records("visit")}
    assert sorted(visits) == [99050211350080, 99050211350092]  # date, south, scan, frame
    for tile in TILES:
        header = fits.getheader(tile)
        visit = TwoMass().visit_id(str(tile), header, "Ks")
        record = visits[visit]
        assert record["band"] == "Ks" and record["physical_filter"] == "2MASS-Ks"
        assert record["datetime_begin"].startswith("1999-05-02T09:2")
        image = twomass.get(
            "image", {"instrument": "2MASS", "visit": visit, "detector": 0}, collections="2MASS/m17"
        )
        # Vega MAGZP + 1.85 = AB zero point of one DN
        assert image.photo_calib.zero_point == pytest.approx(header["MAGZP"] + 1.85, abs=1e-9)
        pixels = fits.getdata(tile).astype(np.float32)
        finite = np.isfinite(pixels)  # the tiles' edges are NaN: NO_DATA, infinite variance
        assert np.array_equal(image.image[finite], pixels[finite])
        no_data = (image.mask & (1 << image.mask_planes["NO_DATA"])) != 0
        assert np.array_equal(no_data, ~finite) and np.all(np.isinf(image.variance[~finite]))
        # the sky noise is 2MASS's own SKYSIG
        assert math.sqrt(float(np.median(image.variance))) == pytest.approx(header["SKYSIG"])
        polygon = ConvexPolygon.from_json(record["region"])
        assert polygon.contains(header["CRVAL1"], header["CRVAL2"])


def test_2mass_aperture_magnitudes_agree_with_magzp_photometry(twomass):
    """src aperture magnitudes (nJy -> AB -> Vega) against sep apertures on the ingested pixels
    with sep's background and MAGZP: the same to 1 mmag (measured 0.0 +- 0.3 mmag)."""
    for ref in twomass.query_datasets("src", collections="2MASS/sfp"):
        data_id = {k: ref.data_id[k] for k in ("instrument", "visit", "detector")}
        src = twomass.get(ref)
        image = twomass.get("image", data_id, collections="2MASS/m17")
        summary = twomass.get("calexpSummary", data_id, collections="2MASS/sfp")
        assert summary["psf_source"] == "fit" and summary["photometry_source"] == "input"
        assert 2.0 < summary["seeing_arcsec"] < 4.0  # 2MASS atlas seeing (~2.5-3")
        pixels = image.image.astype(float)
        no_data = (image.mask & (1 << image.mask_planes["NO_DATA"])) != 0
        sky = sep.Background(pixels, mask=no_data, bw=64, bh=64, fw=3, fh=3).back()
        snr = np.asarray(src["psfFlux"]) / np.asarray(src["psfFluxErr"])
        good = snr > 50
        for flag in ("flag_saturated", "flag_blended", "flag_edge"):
            good &= ~np.asarray(src[flag])
        x, y = np.asarray(src["x"])[good], np.asarray(src["y"])[good]
        counts, _, _ = sep.sum_circle(pixels - sky, x, y, 6.0)
        magzp = image.metadata["MAGZP"] - 2.5 * np.log10(counts)
        ours = 31.4 - 2.5 * np.log10(np.asarray(src["ap06Flux"])[good]) - 1.85
        diff = ours - magzp
        diff = diff[np.isfinite(diff)]  # apertures that reach the tile's NaN edge have no flux
        assert len(diff) > 150
        assert abs(float(np.median(diff))) < 0.001
        assert 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) < 0.002


def _header(**cards) -> fits.Header:
    header = fits.Header()
    for key, value in cards.items():
        header[key.replace("_", "-") if key in ("MJD_OBS", "DATE_OBS") else key] = value
    return header


def _write(path: Path, header: fits.Header, shape=(60, 80), seed=1) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.normal(10.0, 1.0, shape).astype(np.float32)
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def _sdss_header(**changes) -> fits.Header:
    cards = dict(
        TELESCOP="2.5m", RUN=752, CAMCOL=3, FRAME=120, FILTER="r", BUNIT="nanomaggy",
        TAI=4.5e9, CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=180.0, CRVAL2=0.5,
        CRPIX1=40.0, CRPIX2=30.0, CD1_1=-0.396 / 3600, CD1_2=0.0, CD2_1=0.0, CD2_2=0.396 / 3600,
    )  # fmt: skip
    cards.update(changes)
    return _header(**cards)


def _spitzer_header(**changes) -> fits.Header:
    cards = dict(
        TELESCOP="Spitzer", INSTRUME="IRAC", CHNLNUM=1, BUNIT="MJy/sr", AORKEY=12345678,
        MJD_OBS=53500.25, CTYPE1="GLON-TAN", CTYPE2="GLAT-TAN", CRVAL1=15.0, CRVAL2=-0.7,
        CRPIX1=40.0, CRPIX2=30.0, CDELT1=-0.6 / 3600, CDELT2=0.6 / 3600,
    )  # fmt: skip
    cards.update(changes)
    return _header(**cards)


def test_sdss_and_spitzer_images_ingest_in_njy_and_icrs(tmp_path):
    sdss = _write(tmp_path / "frame-r-000752-3-0120.fits", _sdss_header())
    spitzer = _write(tmp_path / "spitzer-irac1.fits", _spitzer_header())
    root = tmp_path / "repo"
    drp("create", root)
    drp("ingest", root, sdss, spitzer, "--run", "other")
    repo = Repository(str(root))
    s = repo.get(
        "image", {"instrument": "SDSS", "visit": Sdss().visit_id("", fits.getheader(sdss), "r"),
                  "detector": 0}, collections="other",
    )  # fmt: skip
    assert s.photo_calib.calibration_mean == NANOMAGGY_NJY  # 1 nanomaggy = 3631 nJy, AB 22.5
    assert s.photo_calib.zero_point == pytest.approx(22.5, abs=1e-3)
    assert math.sqrt(float(np.median(s.variance))) == pytest.approx(1.0, rel=0.05)  # from pixels
    assert Sdss().visit_id("", fits.getheader(sdss), "r") == ((752 * 10 + 3) * 10000 + 120) * 10 + 2
    visit = Spitzer().visit_id("", fits.getheader(spitzer), "I1")
    sp = repo.get(
        "image", {"instrument": "Spitzer", "visit": visit, "detector": 0}, collections="other"
    )
    pixel_sr = (0.6 / 3600 * math.pi / 180) ** 2
    assert sp.photo_calib.calibration_mean == pytest.approx(1e15 * pixel_sr, rel=1e-9)
    assert sp.wcs.wcs.ctype[0] == "GLON-TAN"  # the image keeps its Galactic WCS
    record = repo.query_dimension_records("visit", where="instrument = 'Spitzer'")[0]
    centre = SkyCoord(sp.wcs.pixel_to_world(39.5, 29.5)).icrs
    assert record["ra"] == pytest.approx(centre.ra.deg, abs=1e-9)
    assert record["dec"] == pytest.approx(centre.dec.deg, abs=1e-9)
    polygon = ConvexPolygon.from_json(record["region"])
    assert polygon.contains(centre.ra.deg, centre.dec.deg)  # footprint in ICRS, not (l, b)


@pytest.mark.parametrize(
    ("name", "header", "message"),
    [
        ("frame-bad.fits", _sdss_header(BUNIT="counts"), "expected nanomaggy"),
        ("spitzer.fits", _spitzer_header(BUNIT="DN"), "expected MJy/sr"),
        ("spitzer-nowcs.fits", _header(TELESCOP="Spitzer", INSTRUME="IRAC", CHNLNUM=2,
                                       BUNIT="MJy/sr", MJD_OBS=53500.0), "no 2-d celestial WCS"),
        ("aK_asky_990502s1350080.fits", _header(ORIGIN="2MASS", FILTER="k", UT_DATE="990502",
                                                UT="09:22:50", CTYPE1="RA---SIN",
                                                CTYPE2="DEC--SIN", CRVAL1=275.0, CRVAL2=-16.2,
                                                CDELT1=-1 / 3600, CDELT2=1 / 3600),
         "without MAGZP cannot be calibrated"),
        ("k0793135.fits", _header(ORIGIN="2MASS", FILTER="k", MAGZP=19.9, UT_DATE="990502",
                                  UT="09:22:50", CTYPE1="RA---SIN", CTYPE2="DEC--SIN",
                                  CRVAL1=275.0, CRVAL2=-16.2, CDELT1=-1 / 3600, CDELT2=1 / 3600),
         "not a 2MASS atlas file name"),
    ],
)  # fmt: skip
def test_bad_images_are_refused_naming_the_file(tmp_path, name, header, message):
    path = _write(tmp_path / name, header)
    root = tmp_path / "repo"
    drp("create", root)
    result = drp("ingest", root, path, "--run", "x", ok=False)
    assert result.exit_code != 0
    assert str(path) in result.output and message in result.output, result.output
    assert not Repository(str(root)).registry.current_datasets().height


def test_spitzer_band_needs_a_channel_or_wavelength():
    with pytest.raises(DimensionRecordError, match="cannot tell the Spitzer band"):
        Spitzer().band_of("x.fits", _spitzer_header(CHNLNUM=9))
    assert Spitzer().band_of("x.fits", _header(TELESCOP="Spitzer", WAVELEN=23.7)) == "M1"
