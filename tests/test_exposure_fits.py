"""Exposure, PhotoCalib, PSF models and the FITS formatters (Exposure, Image, raw HDUList)."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, Sip

from repo.errors import CorruptDatasetError, FormatterError, StorageError
from repo.exposure import DEFAULT_MASK_PLANES, MASK_PLANE_DOCS, Exposure, PhotoCalib
from repo.formatters.fits import (
    read_exposure,
    read_hdulist,
    read_image,
    read_image_header,
    write_exposure,
    write_hdulist,
    write_image,
)
from repo.psf import GaussianPsf, ImagePsf, Psf, PsfexPsf

# ---------------------------------------------------------------------------------------------
# builders and comparisons


def sip_wcs(rng: np.random.Generator) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crval = [rng.uniform(0, 360), rng.uniform(-80, 80)]
    wcs.wcs.crpix = rng.uniform(0, 200, 2)
    wcs.wcs.cd = rng.normal(0, 1e-4, (2, 2))
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    for p in range(4):
        for q in range(4 - p):
            if p + q >= 2:
                a[p, q], b[p, q] = rng.normal(0, 1e-6, 2)
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def tpv_wcs() -> WCS:
    """A TPV WCS with full-precision coefficients, as DECam's CP writes them."""
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
    header["CRVAL1"], header["CRVAL2"] = 110.22567099751234, 23.787715014523456
    header["CRPIX1"], header["CRPIX2"] = 1855.2123456789, -1023.0987654321
    header["CD1_1"], header["CD1_2"] = 1.323472799228123e-08, 7.285385758247123e-05
    header["CD2_1"], header["CD2_2"] = -7.287830809077123e-05, -1.635331164081e-10
    rng = np.random.default_rng(3)
    for axis in (1, 2):
        header[f"PV{axis}_1"] = 1.0057 + rng.normal(0, 1e-4)
        for k in (0, 2, 4, 5, 6, 7, 8, 9, 10):
            header[f"PV{axis}_{k}"] = rng.normal(0, 1e-3)
    return WCS(header)


def synthetic_psfex(rng: np.random.Generator, size: int = 25) -> PsfexPsf:
    r = np.arange(size) - size // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    gauss = np.exp(-(xx**2 + yy**2) / (2 * 2.0**2))
    basis = [gauss / gauss.sum()] + [rng.normal(0, 1e-3, gauss.shape) for _ in range(5)]
    return PsfexPsf(np.array(basis, np.float32), (50.5, 40.5), (100.0, 80.0), 2, 1.0, 4.7)


METADATA = {
    "A": 0.1 + 0.2,
    "TINY": 1e-300,
    "DENORM": 5e-324,
    "BIGGEST": 1.7976931348623157e308,
    "NEGZERO": -0.0,
    "THIRD": 1 / 3,
    "LONGFLT": 1.2345678901234568e17,
    "NAN": math.nan,
    "PINF": math.inf,
    "NINF": -math.inf,
    "IMAX": 2**63 - 1,
    "IMIN": -(2**63),
    "ZERO": 0,
    "T": True,
    "F": False,
    "EMPTY": "",
    "QUOTE": "it's",
    "LEADING": "  indented",
    "LONGSTR": "x" * 150 + " end",
    "DP1": "AXIS.1: 1",  # looks like a FITS record-valued keyword
    "lower": "case kept",
    "dotted.key.name": 3,
    "key with spaces": 2.5,
    "EXPTIME": 30.0,
    "STRNAN": "NaN",  # a string, not a float
}


def assert_metadata_identical(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert type(got[key]) is type(value), key
        assert repr(got[key]) == repr(value), key  # exact, NaN-safe, sign of zero


def assert_arrays_identical(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype.newbyteorder("=")
    assert got.dtype.isnative
    assert got.shape == expected.shape
    # bit for bit, including NaN payloads and the sign of zero
    assert np.array_equal(
        np.ascontiguousarray(got).view(np.uint8),
        np.ascontiguousarray(expected.astype(got.dtype)).view(np.uint8),
    )


def assert_wcs_identical(got: WCS | None, expected: WCS | None, shape: tuple[int, int]) -> None:
    if expected is None:
        assert got is None
        return
    rng = np.random.default_rng(11)
    ny, nx = shape
    x = np.concatenate([rng.uniform(-0.5, nx - 0.5, 2000), rng.uniform(-3000, 3000, 500)])
    y = np.concatenate([rng.uniform(-0.5, ny - 0.5, 2000), rng.uniform(-3000, 3000, 500)])
    a = np.array(expected.all_pix2world(x, y, 0))
    b = np.array(got.all_pix2world(x, y, 0))
    assert np.array_equal(a, b)


def assert_exposures_identical(got: Exposure, expected: Exposure) -> None:
    assert_arrays_identical(got.image, expected.image)
    assert_arrays_identical(got.mask, expected.mask)
    assert_arrays_identical(got.variance, expected.variance)
    assert got.mask_planes == expected.mask_planes
    assert list(got.mask_planes) == list(expected.mask_planes)
    assert got.mask_plane_docs == expected.mask_plane_docs
    assert_metadata_identical(got.metadata, expected.metadata)
    assert got.photo_calib == expected.photo_calib
    assert got.psf == expected.psf
    assert type(got.psf) is type(expected.psf)
    assert_wcs_identical(got.wcs, expected.wcs, expected.shape)


def full_exposure(
    image_dtype=np.float32, variance_dtype=np.float32, psf: Psf | None = None, seed: int = 0
) -> Exposure:
    rng = np.random.default_rng(seed)
    shape = (37, 53)
    image = rng.normal(100, 10, shape).astype(image_dtype)
    image[0, 0], image[0, 1], image[0, 2], image[0, 3] = np.nan, np.inf, -0.0, 1e-40
    variance = rng.uniform(1, 5, shape).astype(variance_dtype)
    variance[1, 1] = np.inf
    exposure = Exposure(
        image=image,
        mask=np.zeros(shape, np.int32),
        variance=variance,
        wcs=sip_wcs(rng),
        psf=psf if psf is not None else GaussianPsf(1.7, 13),
        photo_calib=PhotoCalib(0.1 + 0.2, 1e-3 / 3),
        metadata=dict(METADATA),
    )
    bit = exposure.add_mask_plane("MYPLANE", ("a plane of our own, with a long doc " * 3).strip())
    exposure.mask[2:5, 3:9] |= bit
    exposure.mask[10, :] |= exposure.bit("SAT") | exposure.bit("NO_DATA")
    exposure.mask[-1, -1] = np.int32(-(2**31) + 7)  # every representable bit pattern survives
    return exposure


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    "image_dtype, variance_dtype",
    [(np.float32, np.float32), (np.float64, np.float32), (np.float64, np.float64)],
)
def test_round_trip_with_every_field(image_dtype, variance_dtype):
    exposure = full_exposure(image_dtype, variance_dtype)
    back = read_exposure(write_exposure(exposure), "mem://full")
    assert_exposures_identical(back, exposure)
    assert back.image.dtype == np.dtype(image_dtype)
    assert back.variance.dtype == np.dtype(variance_dtype)


@pytest.mark.parametrize("kind", ["gaussian", "image", "psfex"])
def test_round_trip_of_each_psf_model(kind):
    rng = np.random.default_rng(5)
    psf = {
        "gaussian": GaussianPsf(2.0000000000000004, 21),
        "image": ImagePsf(rng.uniform(0, 1, (15, 11))),
        "psfex": synthetic_psfex(rng),
    }[kind]
    exposure = full_exposure(psf=psf)
    back = read_exposure(write_exposure(exposure), "mem://psf")
    assert type(back.psf) is type(psf)
    assert back.psf == psf
    for x, y in [(0, 0), (12.5, 30.25), (52, 36)]:
        assert np.array_equal(back.psf.kernel_image(x, y), psf.kernel_image(x, y))


def test_round_trip_with_optional_fields_none():
    rng = np.random.default_rng(1)
    exposure = Exposure(
        image=rng.normal(size=(8, 9)),
        mask=np.zeros((8, 9), np.int32),
        variance=np.ones((8, 9), np.float32),
    )
    back = read_exposure(write_exposure(exposure), "mem://bare")
    assert_exposures_identical(back, exposure)
    assert back.wcs is None and back.psf is None and back.photo_calib is None
    assert back.metadata == {}
    assert back.mask_planes == DEFAULT_MASK_PLANES
    assert back.mask_plane_docs == MASK_PLANE_DOCS


def test_big_endian_input_comes_back_native():
    image = np.arange(12, dtype=">f8").reshape(3, 4)
    exposure = Exposure(image, np.zeros((3, 4), ">i4"), np.ones((3, 4), ">f4"))
    back = read_exposure(write_exposure(exposure), "mem://be")
    assert back.image.dtype == np.dtype("=f8") and back.image.dtype.isnative
    assert back.mask.dtype == np.dtype("=i4")
    assert np.array_equal(back.image, image)


def test_tpv_wcs_round_trips_exactly():
    exposure = full_exposure()
    exposure.wcs = tpv_wcs()
    data = write_exposure(exposure)
    back = read_exposure(data, "mem://tpv")
    assert_wcs_identical(back.wcs, exposure.wcs, exposure.shape)
    header = fits.getheader(io.BytesIO(data), "IMAGE")
    assert header["CTYPE1"] == "RA---TPV" and "PV1_10" in header


def test_metadata_values_keep_type_order_and_value():
    exposure = full_exposure()
    back = read_exposure(write_exposure(exposure), "mem://meta")
    assert_metadata_identical(back.metadata, METADATA)
    assert math.copysign(1.0, back.metadata["NEGZERO"]) == -1.0
    assert back.metadata["STRNAN"] == "NaN" and isinstance(back.metadata["STRNAN"], str)


def test_mask_planes_written_like_afw_with_docs():
    exposure = full_exposure()
    with fits.open(io.BytesIO(write_exposure(exposure))) as hdul:
        header = hdul["MASK"].header
        assert header["MP_SAT"] == 1
        assert header["MP_NO_DATA"] == 8
        assert header["MP_DETECTED_NEGATIVE"] == 6
        assert header["MP_MYPLANE"] == exposure.mask_planes["MYPLANE"] == 16
        assert header["MPDOC_CR"] == MASK_PLANE_DOCS["CR"]
        assert header["MPDOC_MYPLANE"] == exposure.mask_plane_docs["MYPLANE"]
        assert header.comments["MP_CR"] == MASK_PLANE_DOCS["CR"]


def test_plain_astropy_reads_the_file():
    exposure = full_exposure()
    with fits.open(io.BytesIO(write_exposure(exposure)), checksum=True) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF"]
        assert hdul[0].header["DRPTYPE"] == "Exposure"
        assert hdul[0].header["CALMEAN"] == exposure.photo_calib.calibration_mean
        assert hdul[0].header["MAGZERO"] == pytest.approx(exposure.photo_calib.zero_point)
        assert np.array_equal(hdul["IMAGE"].data, exposure.image, equal_nan=True)
        assert hdul["PSF"].header["PSFTYPE"] == "GAUSSIAN"
        plain = WCS(hdul["IMAGE"].header)
        assert np.allclose(plain.wcs.crval, exposure.wcs.wcs.crval, rtol=0, atol=0)


def test_writing_is_deterministic():
    first = write_exposure(full_exposure(seed=4))
    time.sleep(1.05)  # gzip records the second of writing unless told otherwise
    assert write_exposure(full_exposure(seed=4)) == first


def test_planes_are_tile_compressed_without_loss():
    rng = np.random.default_rng(7)
    shape = (300, 200)
    exposure = Exposure(
        image=rng.normal(0, 5, shape).astype(np.float32),
        mask=(rng.random(shape) < 0.01).astype(np.int32) * 4,
        variance=rng.uniform(20, 30, shape).astype(np.float32),
    )
    data = write_exposure(exposure)
    with fits.open(io.BytesIO(data)) as hdul:
        kinds = {hdu.name: (type(hdu).__name__, hdu.compression_type) for hdu in hdul[1:]}
    assert kinds == {
        "IMAGE": ("CompImageHDU", "GZIP_2"),
        "MASK": ("CompImageHDU", "RICE_1"),
        "VARIANCE": ("CompImageHDU", "GZIP_2"),
    }
    # 4 bytes per pixel and plane uncompressed; the sparse mask all but vanishes
    assert len(data) < 0.8 * 3 * 4 * shape[0] * shape[1]
    back = read_exposure(data, "test")
    for plane in ("image", "mask", "variance"):
        assert np.array_equal(getattr(back, plane), getattr(exposure, plane)), plane


def test_uncompressed_exposure_files_still_read():
    exposure = full_exposure(seed=2)
    with fits.open(io.BytesIO(write_exposure(exposure))) as hdul:
        plain = fits.HDUList(
            [fits.PrimaryHDU(header=hdul[0].header)]
            + [fits.ImageHDU(h.data, header=h.header, name=h.name) for h in hdul[1:4]]
            + [h.copy() for h in hdul[4:]]
        )
        buffer = io.BytesIO()
        for hdu in plain:
            hdu.add_checksum()
        plain.writeto(buffer)
    back = read_exposure(buffer.getvalue(), "plain")
    assert np.array_equal(back.image, exposure.image, equal_nan=True)
    assert np.array_equal(back.mask, exposure.mask)


@pytest.mark.skipif(shutil.which("fitsverify") is None, reason="fitsverify is not installed")
@pytest.mark.parametrize("kind", ["gaussian", "psfex", "bare", "image"])
def test_fitsverify_is_clean(kind, tmp_path):
    rng = np.random.default_rng(2)
    if kind == "image":
        data = write_image(rng.normal(size=(5, 7)), {"lower.key": "x" * 100, "N": math.nan})
    elif kind == "bare":
        data = write_exposure(
            Exposure(np.zeros((4, 4)), np.zeros((4, 4), np.int32), np.ones((4, 4)))
        )
    else:
        psf = synthetic_psfex(rng) if kind == "psfex" else None
        data = write_exposure(full_exposure(psf=psf))
    path = tmp_path / "exposure.fits"
    path.write_bytes(data)
    result = subprocess.run(["fitsverify", str(path)], capture_output=True, text=True, timeout=60)
    assert "Verification found 0 warning(s) and 0 error(s)" in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------
# corrupt input and wrong types


def _corruptions(data: bytes) -> dict[str, bytes]:
    with fits.open(io.BytesIO(data)) as hdul:
        offsets = [hdu.fileinfo()["hdrLoc"] for hdu in hdul]
        variance_data = hdul["VARIANCE"].fileinfo()["datLoc"]
    flip_data = bytearray(data)
    flip_data[variance_data + 101] ^= 0x10
    flip_header = bytearray(data)
    flip_header[data.index(b"EXPTIME =") + 28] = ord("7")
    cases = {
        "empty": b"",
        "garbage": b"not a fits file at all " * 200,
        "half": data[: len(data) // 2],
        "minus one byte": data[:-1],
        "minus one block": data[:-2880],
        "flipped data bit": bytes(flip_data),
        "flipped header digit": bytes(flip_header),
    }
    for i, offset in enumerate(offsets[1:], start=1):
        cases[f"cut before HDU {i}"] = data[:offset]
    return cases


def test_corrupt_and_truncated_files_name_the_source():
    data = write_exposure(full_exposure())
    cases = _corruptions(data)
    assert len(cases) >= 11
    for name, broken in cases.items():
        source = f"s3://bucket/run/calexp_{name.replace(' ', '_')}.fits"
        with pytest.raises(CorruptDatasetError, match=source.replace(".", r"\.")):
            read_exposure(broken, source)


def _rewrite(data: bytes, edit) -> bytes:
    with fits.open(io.BytesIO(data)) as hdul:
        hdul.readall()
        hdul = edit(hdul) or hdul
        buffer = io.BytesIO()
        hdul.writeto(buffer, checksum=True)
    return buffer.getvalue()


def _set(hdu_name: str, key: str, value):
    def edit(hdul):
        hdul[hdu_name].header[key] = value

    return edit


def _float_mask(hdul):
    hdul["MASK"].data = hdul["MASK"].data.astype(np.float32)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("PRIMARY", "DRPTYPE", "Image"), "not a drp Exposure"),
        (_set("PRIMARY", "DRPVERS", 99), "layout version"),
        (lambda h: fits.HDUList([h[0], h[1], h[3], h[2], h[4]]), "IMAGE, MASK, VARIANCE"),
        (lambda h: fits.HDUList([h[0], h[1], h[2], h[4]]), "extensions"),
        (_float_mask, "MASK has dtype float32"),
        (_set("PSF", "PSFTYPE", "MOFFAT"), "unknown PSFTYPE 'MOFFAT'"),
        (_set("PSF", "PSFSIGMA", "wide"), "PSFSIGMA must be a number"),
        (_set("PRIMARY", "CALMEAN", -1.0), "calibration_mean"),
        (_set("MASK", "MP_SAT", 3), "both use bit 3"),
        (_set("IMAGE", "CTYPE1", "RA---XYZ"), "invalid WCS"),
    ],
)
def test_wrong_structure_is_corrupt(edit, message):
    data = _rewrite(write_exposure(full_exposure()), edit)
    with pytest.raises(CorruptDatasetError, match=message) as info:
        read_exposure(data, "file:///repo/x.fits")
    assert "file:///repo/x.fits" in str(info.value)


@pytest.mark.parametrize("obj", [np.zeros((3, 3)), "calexp", None, fits.HDUList()])
def test_writing_a_wrong_type_is_a_formatter_error(obj):
    with pytest.raises(FormatterError, match="expected an Exposure"):
        write_exposure(obj)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("np", np.float64(1.0), "must be bool, int, float or str"),
        ("obj", [1, 2], "must be bool, int, float or str"),
        ("COMMENT", "x", "reserved"),
        ("NAXIS1", 3, "reserved"),
        ("CALMEAN", 1.0, "reserved"),
        ("a=b", 1, "cannot be a FITS keyword"),
        ("two  spaces", 1, "cannot be a FITS keyword"),
        ("TRAIL", "x  ", "trailing spaces"),
        ("UNI", "caf\u00e9", "printable ASCII"),
        ("HUGE", 2**63, "64 bits"),
        ("k" * 61, 1, "longer than"),
        ("AMP", "y" * 100 + "&", "cannot be stored exactly"),  # CONTINUE eats a final '&'
    ],
)
def test_metadata_fits_cannot_hold_is_refused(key, value, message):
    exposure = full_exposure()
    exposure.metadata[key] = value
    with pytest.raises(FormatterError, match=message):
        write_exposure(exposure)


def test_metadata_keys_equal_but_for_case_are_refused():
    exposure = full_exposure()
    exposure.metadata.update({"exptime2": 1, "EXPTIME2": 2})
    with pytest.raises(FormatterError, match="differ only in case"):
        write_exposure(exposure)


def test_planes_replaced_after_construction_are_checked_on_write():
    exposure = full_exposure()
    exposure.variance = np.ones((2, 2), np.float32)
    with pytest.raises(FormatterError, match="same shape"):
        write_exposure(exposure)


# ---------------------------------------------------------------------------------------------
# Exposure and PhotoCalib


def test_exposure_validation():
    good = np.zeros((3, 4))
    mask = np.zeros((3, 4), np.int32)
    with pytest.raises(ValueError, match="same shape"):
        Exposure(good, mask, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="mask must be int32"):
        Exposure(good, mask.astype(np.int64), good)
    with pytest.raises(ValueError, match="image must be float32 or float64"):
        Exposure(good.astype(np.int32), mask, good)
    with pytest.raises(ValueError, match="2-D"):
        Exposure(np.zeros((2, 3, 4)), np.zeros((2, 3, 4), np.int32), np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="numpy"):
        Exposure([[1.0]], mask, good)
    with pytest.raises(TypeError, match="np.float64|float64"):
        Exposure(good, mask, good, metadata={"X": np.float64(1)})
    with pytest.raises(ValueError, match="both use bit 1"):
        Exposure(
            good,
            mask,
            good,
            mask_planes={"BAD": 1, "SAT": 1},
            mask_plane_docs={"BAD": "b", "SAT": "s"},
        )


def test_mask_plane_helpers():
    exposure = Exposure(np.zeros((2, 2)), np.zeros((2, 2), np.int32), np.zeros((2, 2)))
    assert exposure.shape == (2, 2)
    assert exposure.bit("BAD") == 1 and exposure.bit("SAT") == 2 and exposure.bit("NO_DATA") == 256
    assert exposure.bits("BAD", "CR") == 1 | 8
    with pytest.raises(KeyError, match="unknown mask plane 'BLEED'.*known planes: BAD, SAT"):
        exposure.bit("BLEED")
    value = exposure.add_mask_plane("BLEED", "bleed trail")
    assert value == 1 << 16 and exposure.bit("BLEED") == value
    assert exposure.add_mask_plane("BLEED", "other doc") == value
    assert exposure.mask_plane_docs["BLEED"] == "bleed trail"
    with pytest.raises(ValueError, match="invalid"):
        exposure.add_mask_plane("lower", "x")
    with pytest.raises(ValueError, match="must not end with spaces"):
        exposure.add_mask_plane("SPACED", "doc ")
    assert "lower" not in exposure.mask_planes
    for i in range(17, 31):
        exposure.add_mask_plane(f"P{i}", "filler")
    with pytest.raises(ValueError, match="all 31 bits used"):
        exposure.add_mask_plane("ONE_TOO_MANY", "x")


def test_photo_calib_conversions():
    calib = PhotoCalib(2.0, 0.1)
    assert calib.zero_point == pytest.approx(31.4 - 2.5 * math.log10(2.0), abs=1e-12)
    assert PhotoCalib(1.0).zero_point == 31.4  # 1 nJy is AB 31.4
    # 3631 Jy is AB 0: an image unit worth 3631e9 nJy has zero point ~0
    assert PhotoCalib(3631e9).zero_point == pytest.approx(0.0, abs=1e-4)
    flux = calib.instflux_to_nanojansky(np.array([1.0, 10.0]))
    assert np.array_equal(flux, [2.0, 20.0])
    flux, err = calib.instflux_to_nanojansky(np.array([10.0]), np.array([3.0]))
    assert flux[0] == 20.0
    assert err[0] == pytest.approx(math.hypot(3.0 * 2.0, 10.0 * 0.1))
    back = PhotoCalib.from_zero_point(27.0, 0.01)
    assert back.zero_point == pytest.approx(27.0, abs=1e-12)
    assert back.calibration_mean == pytest.approx(10 ** (0.4 * 4.4))
    assert back.calibration_err == pytest.approx(back.calibration_mean * 0.4 * math.log(10) * 0.01)
    # mag of a 1000-unit source from either route agrees
    mag = 31.4 - 2.5 * math.log10(back.instflux_to_nanojansky(1000.0))
    assert mag == pytest.approx(27.0 - 2.5 * 3, abs=1e-12)
    with pytest.raises(ValueError, match="calibration_mean"):
        PhotoCalib(0.0)
    with pytest.raises(ValueError, match="calibration_err"):
        PhotoCalib(1.0, math.nan)


# ---------------------------------------------------------------------------------------------
# PSF models


def test_gaussian_psf_kernel_and_sigma():
    psf = GaussianPsf(2.0, 21)
    kernel = psf.kernel_image(100.0, 200.0)
    assert kernel.shape == (21, 21)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (10, 10)
    assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1, ::-1])
    assert psf.sigma(0, 0) == pytest.approx(2.0, rel=1e-6)
    assert psf.fwhm(0, 0) == pytest.approx(2.0 * 2.35482, rel=1e-5)
    assert GaussianPsf(1.0).size == 11
    with pytest.raises(ValueError, match="odd"):
        GaussianPsf(1.0, 10)
    with pytest.raises(ValueError, match="sigma"):
        GaussianPsf(-1.0)


def test_adaptive_sigma_ignores_wings():
    """A Gaussian core with broad faint wings still reports the core's sigma (like LSST)."""
    r = np.arange(61) - 30
    yy, xx = np.meshgrid(r, r, indexing="ij")
    core = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    wings = 0.002 * np.exp(-(xx**2 + yy**2) / (2 * 12.0**2))
    psf = ImagePsf(core + wings)
    assert psf.sigma(0, 0) == pytest.approx(1.5, rel=0.03)
    assert ImagePsf(core).sigma(0, 0) == pytest.approx(1.5, rel=1e-6)


def test_image_psf_normalizes_and_checks_shape():
    psf = ImagePsf(np.ones((3, 5)) * 4)
    assert psf.kernel_image(0, 0).sum() == pytest.approx(1.0)
    assert np.all(psf.kernel_image(7, 8) == 1 / 15)
    with pytest.raises(ValueError, match="odd size"):
        ImagePsf(np.ones((4, 5)))


def test_psfex_polynomial_convention():
    """c_k = dx**i dy**j with x powers fastest; dx uses one-based X_IMAGE."""
    size = 5
    basis = np.zeros((6, size, size), np.float32)
    for k in range(6):
        basis[k, 2, 2] = 1.0  # the centre, so that every term contributes
        basis[k, 0, k % size] = 10.0**k  # a tag pixel per term
    psf = PsfexPsf(basis, (11.0, 21.0), (10.0, 20.0), 2)
    x, y = 30.0, 60.0  # zero-based -> X_IMAGE 31, Y_IMAGE 61 -> dx = 2, dy = 2
    dx, dy = (x + 1 - 11) / 10, (y + 1 - 21) / 20
    assert (dx, dy) == (2.0, 2.0)
    expected_terms = [1, dx, dx**2, dy, dx * dy, dy**2]
    assert np.allclose(psf.polynomial_terms(x, y), expected_terms)
    model = psf.model_image(x, y)
    assert model[2, 2] == pytest.approx(sum(expected_terms))
    assert model[0, 0] == pytest.approx(expected_terms[0] * 1 + expected_terms[5] * 1e5)


def test_psfex_resamples_when_psf_samp_is_not_one():
    r = np.arange(41) - 20
    yy, xx = np.meshgrid(r, r, indexing="ij")
    gauss = np.exp(-(xx**2 + yy**2) / (2 * 4.0**2)).astype(np.float32)
    psf = PsfexPsf(gauss, (0.0, 0.0), (1.0, 1.0), 0, psf_samp=0.5)
    kernel = psf.kernel_image(10, 10)
    assert kernel.shape == (21, 21)  # 41 samples of 0.5 pixel span +-10 pixels
    assert kernel.sum() == pytest.approx(1.0)
    assert psf.sigma(10, 10) == pytest.approx(2.0, rel=1e-3)  # 4 samples of 0.5 pixel
    assert PsfexPsf(gauss, (0.0, 0.0), (1.0, 1.0), 0).sigma(0, 0) == pytest.approx(4.0, rel=1e-4)


def test_psfex_even_basis_is_cropped_around_pixel_n_over_2():
    basis = np.zeros((1, 6, 6), np.float32)
    basis[0, 3, 3] = 1.0
    basis[0, 0, :] = 0.5  # the row that goes
    kernel = PsfexPsf(basis, (0.0, 0.0), (1.0, 1.0), 0).kernel_image(0, 0)
    assert kernel.shape == (5, 5) and kernel[2, 2] == 1.0


def _merged_psfex_file(rows: list[tuple[str, int, float]]) -> bytes:
    """A legacypipe-style merged file: lower-case columns, one row per CCD."""
    n = len(rows)
    size = 25
    r = np.arange(size) - size // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    masks = np.zeros((n, 6, size, size), np.float32)
    for i, (_, _, sigma) in enumerate(rows):
        masks[i, 0] = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    columns = [
        fits.Column("ccdname", "3A", array=[r[0] for r in rows]),
        fits.Column("expnum", "K", array=[r[1] for r in rows]),
        fits.Column("psf_mask", f"{6 * size * size}E", dim=f"({size},{size},6)", array=masks),
        fits.Column("polnaxis", "K", array=[2] * n),
        fits.Column("polname1", "7A", array=["X_IMAGE"] * n),
        fits.Column("polname2", "7A", array=["Y_IMAGE"] * n),
        fits.Column("polzero1", "D", array=[1024.5] * n),
        fits.Column("polzero2", "D", array=[2048.5] * n),
        fits.Column("polscal1", "D", array=[2043.0] * n),
        fits.Column("polscal2", "D", array=[4091.0] * n),
        fits.Column("polngrp", "K", array=[1] * n),
        fits.Column("poldeg1", "K", array=[2] * n),
        fits.Column("psf_samp", "D", array=[1.0] * n),
        fits.Column("psf_fwhm", "D", array=[2.3548 * r[2] for r in rows]),
    ]
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(buffer)
    return buffer.getvalue()


def test_psfex_merged_file_selects_the_ccd(tmp_path):
    path = tmp_path / "merged-psfex.fits"
    path.write_bytes(_merged_psfex_file([("S4", 100, 1.0), ("N10", 100, 1.5), ("S4", 101, 2.0)]))
    psf = PsfexPsf.from_file(path, ccdname="N10")
    assert psf.sigma(1000, 2000) == pytest.approx(1.5, rel=1e-4)
    assert psf.psf_fwhm == pytest.approx(2.3548 * 1.5)
    assert PsfexPsf.from_file(path, "S4", expnum=101).sigma(0, 0) == pytest.approx(2.0, rel=1e-4)
    with pytest.raises(CorruptDatasetError, match="2 PSFEx models match"):
        PsfexPsf.from_file(path, ccdname="S4")
    with pytest.raises(CorruptDatasetError, match="no PSFEx model for ccdname='S9'"):
        PsfexPsf.from_file(path, ccdname="S9")
    with pytest.raises(StorageError, match="missing.fits: no such PSFEx file"):
        PsfexPsf.from_file(tmp_path / "missing.fits")
    junk = tmp_path / "junk.fits"
    junk.write_bytes(write_image(np.zeros((3, 3))))
    with pytest.raises(CorruptDatasetError, match="junk.fits: no PSFEx table"):
        PsfexPsf.from_file(junk)


def test_psf_from_hdus_rejects_unknown_or_missing_type():
    with pytest.raises(CorruptDatasetError, match="no PSF HDU"):
        Psf.from_hdus([])
    hdu = fits.ImageHDU(np.ones((3, 3)), name="PSF")
    with pytest.raises(CorruptDatasetError, match="unknown PSFTYPE None"):
        Psf.from_hdus([hdu])


# ---------------------------------------------------------------------------------------------
# Image storage class


@pytest.mark.parametrize(
    "dtype",
    ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
     "float64", ">f4", "<i8"],
)  # fmt: skip
def test_image_round_trip_is_exact(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        image = np.array([[np.nan, -0.0, np.inf], [1e-38, -1.5, 3.25]], dtype)
    else:
        info = np.iinfo(dtype)
        image = np.array([[info.min, 0, info.max], [1, info.max - 1, info.min + 1]], dtype)
    back = read_image(write_image(image), "mem://img")
    assert_arrays_identical(back, image)


def test_image_header_and_shapes():
    header = {"EXPTIME": 30.5, "lower.case": "v", "NAN": math.nan, "FLAG": False, "N": -3}
    data = write_image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), header)
    assert read_image(data, "x").shape == (2, 3, 4)
    assert_metadata_identical(read_image_header(data, "x"), header)
    assert read_image_header(write_image(np.zeros(3)), "x") == {}
    with fits.open(io.BytesIO(data)) as hdul:
        assert hdul[0].header["DRPTYPE"] == "Image"


@pytest.mark.parametrize(
    "obj, header, message",
    [
        ([1, 2], None, "expected a numpy array"),
        (np.zeros(3, bool), None, "dtype bool"),
        (np.zeros(3, np.complex64), None, "dtype complex64"),
        (np.zeros(3, np.float16), None, "dtype float16"),
        (np.zeros((0, 3)), None, "empty"),
        (np.zeros(3), {"BITPIX": 8}, "reserved"),
        (np.zeros(3), ["not", "a", "mapping"], "mapping"),
        (np.zeros(3), {"X": object()}, "must be bool, int, float or str"),
    ],
)
def test_image_wrong_types_are_formatter_errors(obj, header, message):
    with pytest.raises(FormatterError, match=message):
        write_image(obj, header)


def test_image_reader_rejects_other_files():
    exposure_bytes = write_exposure(full_exposure())
    with pytest.raises(CorruptDatasetError, match="mem://e: not an Image file"):
        read_image(exposure_bytes, "mem://e")
    data = write_image(np.zeros((5, 5)))
    for broken in (data[:-100], data[:1000], b"\0" * 2880):
        with pytest.raises(CorruptDatasetError, match="mem://i"):
            read_image(broken, "mem://i")


# ---------------------------------------------------------------------------------------------
# raw HDUList storage class


def test_hdulist_round_trip_is_fully_loaded():
    table = fits.BinTableHDU.from_columns([fits.Column("a", "D", array=[1.5, 2.5])], name="TAB")
    image = fits.ImageHDU(np.arange(6, dtype=np.int16).reshape(2, 3), name="S4")
    image.header["CCDNUM"] = 28
    hdul = fits.HDUList([fits.PrimaryHDU(), image, table])
    back = read_hdulist(write_hdulist(hdul), "mem://raw")
    back.close()  # the data must already be in memory
    assert [h.name for h in back] == ["PRIMARY", "S4", "TAB"]
    assert np.array_equal(back["S4"].data, image.data)
    assert back["S4"].header["CCDNUM"] == 28
    assert list(back["TAB"].data["a"]) == [1.5, 2.5]


def test_hdulist_errors():
    with pytest.raises(FormatterError, match="expected an astropy HDUList"):
        write_hdulist(np.zeros(3))
    data = write_hdulist(fits.HDUList([fits.PrimaryHDU(np.zeros((50, 50)))]))
    for broken in (b"", b"SIMPLE  = nonsense" * 10, data[: len(data) // 2]):
        with pytest.raises(CorruptDatasetError, match="raw.fits"):
            read_hdulist(broken, "raw.fits")
