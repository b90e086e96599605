"""FITS formatters: the Exposure, Image and Fits storage classes as bytes.

Exposure file (``DRPTYPE = 'Exposure'``), readable by plain astropy and DS9, clean under
``fitsverify``:

==========  =====================================================================================
HDU         content
==========  =====================================================================================
0 primary   no data; ``DRPTYPE``, ``DRPVERS`` (layout version), ``NEXTEND``; the photometric
            calibration
            (``CALMEAN``/``CALERR`` in nJy per image unit, ``MAGZERO``/``MAGZERR`` the AB
            magnitude of one image unit, for humans); then the free metadata, one card per key
            in insertion order
1 IMAGE     the image (float32/float64) with the WCS
2 MASK      the int32 mask with the WCS; ``MP_<NAME> = bit / doc`` per plane as in LSST's afw,
            and ``MPDOC_<NAME>`` holding the full one-line doc of each plane
3 VARIANCE  the variance with the WCS
4.. PSF     the PSF model's HDUs (``EXTNAME = 'PSF'`` with ``PSFTYPE``, then ``PSF_*``); absent
            when the exposure has no PSF
==========  =====================================================================================

The three planes are tile-compressed without loss (the FITS tiled-image convention, as written by
fpack and read by astropy, DS9 and cfitsio; :func:`compressed_hdu`): the mask with RICE_1 (a
1024^2 mask: 4.2 MB -> 0.04 MB), the float planes with GZIP_2 (bytes shuffled by significance,
then deflated: a calexp's image of sky noise 4.2 -> 3.2 MB, its variance 4.2 -> 2.9 MB); files
written before that, with plain image HDUs, read the same. Every HDU carries ``CHECKSUM``/``DATASUM``; reading verifies them, so a flipped bit is reported
rather than silently read. The WCS is written by wcslib with 17 significant digits (and the SIP
coefficients re-formatted exactly), so pixel -> sky is the same bit for bit after a round trip.

Metadata cards: a key of at most 8 upper-case letters, digits, ``_`` or ``-`` is a standard
keyword; any other key (lower case, longer, with ``.`` or single spaces) is a ``HIERARCH`` card
whose case is kept. Values round-trip exactly with their type: ``bool``, ``int`` (64-bit),
``float`` (written with the shortest repr that reads back to the same double; NaN and infinities,
which FITS headers cannot hold, are written as the strings ``'NaN'``, ``'Infinity'``,
``'-Infinity'`` with the comment ``drp: non-finite float``) and ``str`` (printable ASCII without
trailing spaces, which FITS drops; long strings use the ``CONTINUE`` convention, announced with
``LONGSTRN``). Every card is parsed back before it is written, and anything that would not read
back identically (e.g. a long string ending in ``&``) is refused. Keys that differ only in case, and the reserved keywords of the layout, are refused.

Image file (``DRPTYPE = 'Image'``): the array in the primary HDU, any dtype FITS can hold exactly
(int8 to uint64, float32, float64; unsigned and int8 through ``BZERO``), with an optional header
mapping written and read back like Exposure metadata: ``write_image(array, header)``,
``read_image(data, source) -> ndarray`` and ``read_image_header(data, source) -> dict``.

Fits files: any ``HDUList`` written as is (``write_hdulist``) and read back fully loaded
(``read_hdulist``), for raw multi-extension files.

Readers raise :class:`repo.errors.CorruptDatasetError` naming the source and what is wrong;
writers raise :class:`repo.errors.FormatterError` for objects they cannot write.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import warnings
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.hdu.compressed import _codecs as _fits_codecs
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs import wcs as _wcs_module

from ..errors import CorruptDatasetError, FormatterError
from ..exposure import Exposure, MetadataValue, PhotoCalib

if TYPE_CHECKING:
    from ..psf import Psf

#: Version of the Exposure layout written in ``DRPVERS``.
EXPOSURE_LAYOUT_VERSION = 1

_BLOCK = 2880
_NONFINITE_COMMENT = "drp: non-finite float"
_NONFINITE_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_STANDARD_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")
_HIERARCH_KEY = re.compile(r"^[A-Za-z0-9_.+\-]+( [A-Za-z0-9_.+\-]+)*$")
_MAX_KEY_LENGTH = 60
_INT64 = (-(2**63), 2**63 - 1)

_STRUCTURAL = (
    {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "END", "BLOCKED"}
    | {"BSCALE", "BZERO", "BLANK", "EXTNAME", "EXTVER", "EXTLEVEL", "CHECKSUM", "DATASUM"}
    | {"LONGSTRN", "COMMENT", "HISTORY", "CONTINUE", "HIERARCH", "INHERIT", ""}
)
_DRP_KEYS = {"DRPTYPE", "DRPVERS", "NEXTEND", "CALMEAN", "CALERR", "MAGZERO", "MAGZERR"}
_RESERVED = _STRUCTURAL | _DRP_KEYS

_EXPOSURE_PLANES = ("IMAGE", "MASK", "VARIANCE")
#: Rows per compression tile: astropy decodes one tile at a time in Python (~25 us each), and
#: longer tiles deflate better (a 1024^2 image of noise: 3.37 MB in 16-row tiles, 3.23 MB in 64).
TILE_ROWS = 64
#: Deflate level of GZIP tiles. astropy's is 9, which on noise is 2-4x slower than 1 for 1-3%
#: smaller files (a 1024^2 image in 64-row tiles: 0.28 s for 3.14 MB, level 1: 0.08 s, 3.23 MB).
GZIP_LEVEL = 1


def _deflate_tile(data: bytes) -> bytes:
    """gzip for the GZIP_1/GZIP_2 tiles astropy writes: level :data:`GZIP_LEVEL`, and no time
    stamp, which gzip otherwise records, making two writes of the same content differ."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


# astropy's tile codecs call this module-level function with no options (no API sets either);
# every gzip tile written in a process that reads or writes drp FITS files is deterministic.
_fits_codecs.gzip_compress = _deflate_tile
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_WCS_PRECISION = _wcs_module.WCSHDO_all | _wcs_module.WCSHDO_P17 | _wcs_module.WCSHDO_SIP
_SIP_KEY = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")


# --------------------------------------------------------------------------------------------
# Header cards


def format_exact_float(value: float) -> str:
    """FITS text of a finite float that reads back to the same double (shortest repr, ``E``)."""
    if not math.isfinite(value):
        raise ValueError(f"FITS header cards cannot hold {value}")
    text = repr(float(value)).upper()
    if "." not in text and "E" not in text:
        text += ".0"
    return text


def _card_prefix(keyword: str) -> str:
    if _STANDARD_KEY.fullmatch(keyword):
        return f"{keyword:<8}= "
    return f"HIERARCH {keyword} = "


def exact_float_card(keyword: str, value: float, comment: str = "") -> fits.Card:
    """A header card whose float value reads back bit for bit.

    astropy's own formatting keeps at most 20 characters and can drop the last digits of a
    double (``1.7976931348623157e308``); this writes the shortest exact repr instead.
    """
    image = f"{_card_prefix(keyword)}{format_exact_float(value):>20}"
    if len(image) > 80:
        raise ValueError(f"header card {keyword!r} with value {value!r} is longer than 80 chars")
    if comment and len(image) + 4 <= 80:
        image = f"{image} / {comment}"[:80]
    return fits.Card.fromstring(image)


def _plain_card(keyword: str, value: bool | int | str, comment: str = "") -> fits.Card:
    key = keyword if _STANDARD_KEY.fullmatch(keyword) else f"HIERARCH {keyword}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        card = fits.Card(key, value, comment)
        image = str(card)  # formats (and raises if the card cannot be written)
    if not (isinstance(value, str) or len(image) == 80):
        raise ValueError(f"header card {keyword!r} is longer than 80 characters")
    return card


def _int_card_with_short_comment(keyword: str, value: int, comment: str) -> fits.Card:
    """An integer card, with ``comment`` only if all of it fits in the 80 characters."""
    image = f"{_card_prefix(keyword)}{value:>20d}"
    if comment and len(image) + 3 + len(comment) <= 80:
        image = f"{image} / {comment}"
    return fits.Card.fromstring(image)


def metadata_cards(metadata: Mapping[str, MetadataValue], what: str) -> list[fits.Card]:
    """Header cards for free metadata, exact for every supported value (see module doc).

    Raises
    ------
    repo.errors.FormatterError
        A key or value that FITS cannot hold exactly, a reserved key, or keys equal but for case.
    """
    cards = []
    seen: dict[str, str] = {}
    for key, value in metadata.items():
        _check_metadata_key(key, what)
        folded = key.upper()
        if folded in seen:
            raise FormatterError(
                f"{what}: keys {seen[folded]!r} and {key!r} differ only in case, which FITS "
                "keywords do not distinguish"
            )
        seen[folded] = key
        try:
            card = _metadata_card(key, value, what)
        except ValueError as exc:
            raise FormatterError(f"{what} {key!r}: {exc}") from exc
        if not _reads_back(card, key, value):
            raise FormatterError(f"{what} {key!r}: {value!r:.80} cannot be stored exactly in FITS")
        cards.append(card)
    return cards


def _reads_back(card: fits.Card, key: str, value: Any) -> bool:
    """Whether the written card image parses back to the same key, type and value."""
    back_key, back = _card_item(fits.Card.fromstring(card.image))
    if back_key != key or type(back) is not type(value):
        return False
    return repr(back) == repr(value)  # exact for floats (and NaN, -0.0)


def _check_metadata_key(key: object, what: str) -> None:
    if not isinstance(key, str):
        raise FormatterError(f"{what}: key {key!r} is not a string")
    if key.upper() in _RESERVED or key.upper().startswith(("NAXIS", "HIERARCH ")):
        raise FormatterError(f"{what}: key {key!r} is reserved by the FITS layout")
    if not (_STANDARD_KEY.fullmatch(key) or _HIERARCH_KEY.fullmatch(key)):
        raise FormatterError(
            f"{what}: key {key!r} cannot be a FITS keyword; use letters, digits, '_.+-' and "
            "single spaces"
        )
    if len(key) > _MAX_KEY_LENGTH:
        raise FormatterError(f"{what}: key {key!r} is longer than {_MAX_KEY_LENGTH} characters")


def _metadata_card(key: str, value: Any, what: str) -> fits.Card:
    kind = type(value)
    if kind is bool:
        return _plain_card(key, value)
    if kind is int:
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"integer {value} does not fit in 64 bits")
        return _plain_card(key, value)
    if kind is float:
        if math.isfinite(value):
            return exact_float_card(key, value)
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return _plain_card(key, text, _NONFINITE_COMMENT)
    if kind is str:
        if not (value.isascii() and value.isprintable()):
            raise ValueError("strings must be printable ASCII")
        if value != value.rstrip(" "):
            raise ValueError("FITS drops trailing spaces of strings; strip them first")
        return _plain_card(key, value)
    raise FormatterError(
        f"{what} {key!r}: value must be bool, int, float or str, got {kind.__name__}"
    )


def _card_item(card: fits.Card) -> tuple[str, Any]:
    """The (key, value) a metadata card stands for."""
    key, value = card.keyword, card.value
    if card.field_specifier is not None:  # astropy read 'KEY = "a.b: 1"' as a record card
        key, value = card.rawkeyword, card.rawvalue
    if isinstance(value, str) and card.comment == _NONFINITE_COMMENT:
        value = _NONFINITE_TEXT.get(value, value)
    return key, value


def metadata_from_header(header: fits.Header) -> dict[str, Any]:
    """Read metadata cards back: every valued card except the structural and reserved ones."""
    metadata: dict[str, Any] = {}
    for card in header.cards:
        key, value = _card_item(card)
        if key.upper() in _RESERVED or key.upper().startswith("NAXIS"):
            continue
        if not isinstance(value, fits.card.Undefined):
            metadata[key] = value
    return metadata


def _with_long_string_flag(header: fits.Header) -> fits.Header:
    """Add ``LONGSTRN`` when a card uses CONTINUE, as the OGIP convention asks (fitsverify)."""
    if "LONGSTRN" in header:
        return header
    for index, card in enumerate(header.cards):
        if len(card.image) > 80:
            header.insert(index, ("LONGSTRN", "OGIP 1.0", "CONTINUE convention for long strings"))
            break
    return header


# --------------------------------------------------------------------------------------------
# Reading helpers


def _open(data: bytes, source: str, *, strict: bool) -> fits.HDUList:
    """Open FITS bytes fully loaded; any decoding problem is a CorruptDatasetError.

    ``strict`` (files drp wrote) also requires whole 2880-byte blocks, turns every astropy
    warning into an error and verifies CHECKSUM/DATASUM.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptDatasetError(f"{source}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _BLOCK or not data.startswith(b"SIMPLE  ="):
        raise CorruptDatasetError(
            f"{source}: not a FITS file ({len(data)} bytes, no SIMPLE card at the start)"
        )
    if strict and len(data) % _BLOCK:
        raise CorruptDatasetError(
            f"{source}: truncated FITS file ({len(data)} bytes is not a whole number of "
            f"{_BLOCK}-byte blocks)"
        )
    try:
        with warnings.catch_warnings():
            if strict:
                warnings.simplefilter("error")
            else:
                warnings.simplefilter("ignore")
                warnings.filterwarnings("error", message=".*truncated.*")
            hdul = fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False, checksum=strict)
            for hdu in hdul:
                _ = hdu.data
    except CorruptDatasetError:
        raise
    except (
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        EOFError,
        zlib.error,  # a damaged compressed tile
        Warning,
    ) as exc:
        raise CorruptDatasetError(f"{source}: cannot decode FITS ({str(exc).strip()})") from exc
    return hdul


def _native(array: np.ndarray) -> np.ndarray:
    """A native-byte-order, writeable copy with the same dtype and values."""
    return np.array(array, dtype=array.dtype.newbyteorder("="), copy=True)


def _header_number(header: fits.Header, key: str, source: str, hdu: str) -> float:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CorruptDatasetError(f"{source}: {hdu} header {key} must be a number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# WCS


def wcs_header(wcs: WCS, what: str = "WCS") -> fits.Header:
    """The FITS header of a 2-axis WCS, exact to the last bit (SIP and TPV included).

    Raises
    ------
    repo.errors.FormatterError
        The WCS is not 2-D or uses lookup-table distortions, which a header cannot hold.
    """
    if not isinstance(wcs, WCS):
        raise FormatterError(f"{what}: expected an astropy WCS, got {type(wcs).__name__}")
    if wcs.naxis != 2:
        raise FormatterError(f"{what}: only 2-axis WCSs can be written, got {wcs.naxis} axes")
    if any(d is not None for d in (wcs.cpdis1, wcs.cpdis2, wcs.det2im1, wcs.det2im2)):
        raise FormatterError(f"{what}: lookup-table distortions cannot be written to a header")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = wcs.to_header(relax=_WCS_PRECISION)
    if wcs.sip is None:
        return header
    # astropy writes the SIP coefficients itself, with at most 20 characters: redo them exactly.
    arrays = {"A": wcs.sip.a, "B": wcs.sip.b, "AP": wcs.sip.ap, "BP": wcs.sip.bp}
    cards = []
    for card in header.cards:
        match = _SIP_KEY.fullmatch(card.keyword)
        if match:
            name, p, q = match.group(1), int(match.group(2)), int(match.group(3))
            card = exact_float_card(card.keyword, float(arrays[name][p, q]), card.comment)
        cards.append(card)
    return fits.Header(cards)


def _read_wcs(header: fits.Header, source: str) -> WCS | None:
    if "WCSAXES" not in header:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return WCS(header)
    except Exception as exc:  # wcslib raises a zoo of types on a malformed header
        raise CorruptDatasetError(f"{source}: invalid WCS in the IMAGE header ({exc})") from exc


# --------------------------------------------------------------------------------------------
# Exposure


def write_exposure(exposure: Exposure) -> bytes:
    """Serialize an :class:`repo.exposure.Exposure` to FITS bytes (layout in the module doc).

    Raises
    ------
    repo.errors.FormatterError
        ``exposure`` is not an Exposure, is inconsistent, or holds something FITS cannot hold
        exactly (see the metadata rules).
    """
    if not isinstance(exposure, Exposure):
        raise FormatterError(
            f"Exposure storage class: expected an Exposure, got {type(exposure).__name__}"
        )
    try:
        exposure.__post_init__()  # the planes may have been replaced since construction
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatterError(f"Exposure is not valid: {exc}") from exc

    primary = fits.PrimaryHDU(header=_exposure_primary_header(exposure))
    psf_hdus = _psf_hdus(exposure.psf) if exposure.psf is not None else []
    primary.header.insert(
        "DRPVERS", ("NEXTEND", 3 + len(psf_hdus), "number of extensions"), after=True
    )
    wcs_cards = wcs_header(exposure.wcs, "Exposure WCS") if exposure.wcs is not None else None
    hdus: list[Any] = [primary]
    for name, array in zip(
        _EXPOSURE_PLANES, (exposure.image, exposure.mask, exposure.variance), strict=True
    ):
        hdu = compressed_hdu(array, name)
        if wcs_cards is not None:
            hdu.header.extend(wcs_cards.cards)
        if name == "MASK":
            hdu.header.extend(_mask_plane_cards(exposure))
        _with_long_string_flag(hdu.header)
        hdus.append(hdu)
    hdus.extend(psf_hdus)
    return _to_bytes(fits.HDUList(hdus), checksum=True, verify="exception")


def compressed_hdu(
    array: np.ndarray, name: str, header: fits.Header | None = None
) -> fits.CompImageHDU:
    """A losslessly tile-compressed image HDU: RICE_1 for integers (booleans as uint8), GZIP_2
    for floats (not quantized), in tiles of :data:`TILE_ROWS` whole rows."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    tile = (min(TILE_ROWS, array.shape[0]), array.shape[-1])
    if array.dtype.kind == "f":
        return fits.CompImageHDU(
            array,
            header=header,
            name=name,
            compression_type="GZIP_2",
            quantize_level=0.0,
            tile_shape=tile,
        )
    return fits.CompImageHDU(
        array, header=header, name=name, compression_type="RICE_1", tile_shape=tile
    )


def _exposure_primary_header(exposure: Exposure) -> fits.Header:
    header = fits.Header()
    header["EXTEND"] = True
    header["DRPTYPE"] = ("Exposure", "drp storage class")
    header["DRPVERS"] = (EXPOSURE_LAYOUT_VERSION, "drp Exposure FITS layout version")
    calib = exposure.photo_calib
    if calib is not None:
        header.append(
            exact_float_card("CALMEAN", calib.calibration_mean, "[nJy] flux of one image unit")
        )
        header.append(
            exact_float_card("CALERR", calib.calibration_err, "[nJy] uncertainty of CALMEAN")
        )
        header.append(
            exact_float_card("MAGZERO", calib.zero_point, "[mag] AB magnitude of one image unit")
        )
        zp_err = 2.5 / math.log(10.0) * calib.calibration_err / calib.calibration_mean
        header.append(exact_float_card("MAGZERR", zp_err, "[mag] uncertainty of MAGZERO"))
    header.extend(metadata_cards(exposure.metadata, "Exposure metadata"))
    return _with_long_string_flag(header)


def _mask_plane_cards(exposure: Exposure) -> list[fits.Card]:
    cards = []
    for name, bit in exposure.mask_planes.items():
        doc = exposure.mask_plane_docs[name]
        cards.append(_int_card_with_short_comment(f"MP_{name}", bit, doc))
        cards.append(_plain_card(f"MPDOC_{name}", doc))
    return cards


def _psf_from_hdus(hdus: list[Any]) -> Psf:
    from ..psf import Psf  # repo.psf imports this module for its header cards

    return Psf.from_hdus(hdus)


def _psf_hdus(psf: Psf) -> list[Any]:
    hdus = psf.to_hdus()
    names = [hdu.name for hdu in hdus]
    if not names or names[0] != "PSF" or any(not n.startswith("PSF_") for n in names[1:]):
        raise FormatterError(
            f"{type(psf).__name__}.to_hdus() must return HDUs named PSF, PSF_*; got {names}"
        )
    return hdus


def _to_bytes(hdul: fits.HDUList, *, checksum: bool, verify: str) -> bytes:
    """Write to bytes; with ``checksum``, add CHECKSUM/DATASUM with fixed comments (astropy's
    default comments carry the time, which would make identical content differ byte-wise)."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            if checksum:
                hdul.verify(verify)
                hdul.update_extend()
                for hdu in hdul:
                    if hasattr(hdu, "update_header"):
                        hdu.update_header()
                    hdu.add_checksum(when="HDU checksum (ASCII 1's complement)")
            hdul.writeto(buffer, checksum=False, output_verify=verify)
    except (fits.VerifyError, ValueError, TypeError, OSError) as exc:
        raise FormatterError(f"cannot write FITS: {exc}") from exc
    return buffer.getvalue()


def read_exposure(data: bytes, source: str) -> Exposure:
    """Decode bytes written by :func:`write_exposure`.

    Raises
    ------
    repo.errors.CorruptDatasetError
        Not FITS, truncated, a checksum mismatch, or not the Exposure layout; the message names
        ``source`` and what is wrong.
    """
    hdul = _open(data, source, strict=True)
    primary = hdul[0].header
    if primary.get("DRPTYPE") != "Exposure":
        raise CorruptDatasetError(
            f"{source}: not a drp Exposure file (DRPTYPE={primary.get('DRPTYPE')!r})"
        )
    if primary.get("DRPVERS") != EXPOSURE_LAYOUT_VERSION:
        raise CorruptDatasetError(
            f"{source}: unsupported Exposure layout version {primary.get('DRPVERS')!r}"
        )
    if primary.get("NEXTEND") != len(hdul) - 1:
        raise CorruptDatasetError(
            f"{source}: {len(hdul) - 1} extensions but the header announces "
            f"{primary.get('NEXTEND')!r} (truncated at an HDU boundary?)"
        )
    planes = _exposure_planes(hdul, source)
    mask_planes, mask_docs = _read_mask_planes(planes["MASK"].header, source)
    psf_hdus = list(hdul[4:])
    try:
        psf = _psf_from_hdus(psf_hdus) if psf_hdus else None
    except CorruptDatasetError as exc:
        raise CorruptDatasetError(f"{source}: {exc}") from exc
    try:
        return Exposure(
            image=_native(planes["IMAGE"].data),
            mask=_native(planes["MASK"].data),
            variance=_native(planes["VARIANCE"].data),
            wcs=_read_wcs(planes["IMAGE"].header, source),
            psf=psf,
            photo_calib=_read_photo_calib(primary, source),
            mask_planes=mask_planes,
            mask_plane_docs=mask_docs,
            metadata=metadata_from_header(primary),
        )
    except (ValueError, TypeError) as exc:
        raise CorruptDatasetError(f"{source}: invalid Exposure content ({exc})") from exc


def _exposure_planes(hdul: fits.HDUList, source: str) -> dict[str, Any]:
    names = [hdu.name for hdu in hdul]
    if len(hdul) < 4 or tuple(names[1:4]) != _EXPOSURE_PLANES:
        raise CorruptDatasetError(
            f"{source}: expected HDUs IMAGE, MASK, VARIANCE after the primary, found {names[1:]}"
        )
    for name in names[4:]:
        if not (name == "PSF" or name.startswith("PSF_")):
            raise CorruptDatasetError(f"{source}: unexpected HDU {name!r} after the pixel planes")
    if len(names) > 4 and names[4] != "PSF":
        raise CorruptDatasetError(f"{source}: the first PSF HDU must be named PSF, not {names[4]}")
    planes = {name: hdul[i] for i, name in enumerate(_EXPOSURE_PLANES, start=1)}
    for name, hdu in planes.items():
        if not isinstance(hdu, fits.ImageHDU) or hdu.data is None or hdu.data.ndim != 2:
            raise CorruptDatasetError(f"{source}: HDU {name} must be a 2-D image")
        kind = hdu.data.dtype.newbyteorder("=")
        allowed = (np.dtype(np.int32),) if name == "MASK" else _FLOAT_DTYPES
        if kind not in allowed:
            raise CorruptDatasetError(
                f"{source}: HDU {name} has dtype {kind}, expected "
                f"{' or '.join(str(a) for a in allowed)}"
            )
    return planes


def _read_mask_planes(header: fits.Header, source: str) -> tuple[dict[str, int], dict[str, str]]:
    planes: dict[str, int] = {}
    docs: dict[str, str] = {}
    for card in header.cards:
        key = card.keyword
        if key.startswith("MP_"):
            if isinstance(card.value, bool) or not isinstance(card.value, int):
                raise CorruptDatasetError(f"{source}: MASK card {key} must be an integer bit")
            planes[key[3:]] = card.value
        elif key.startswith("MPDOC_"):
            docs[key[6:]] = card.value
    if set(planes) != set(docs):
        raise CorruptDatasetError(
            f"{source}: MASK header planes {sorted(planes)} and docs {sorted(docs)} do not match"
        )
    return planes, {name: docs[name] for name in planes}


def _read_photo_calib(header: fits.Header, source: str) -> PhotoCalib | None:
    if "CALMEAN" not in header:
        return None
    mean = _header_number(header, "CALMEAN", source, "primary")
    err = _header_number(header, "CALERR", source, "primary")
    try:
        return PhotoCalib(mean, err)
    except ValueError as exc:
        raise CorruptDatasetError(f"{source}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Image


def write_image(image: np.ndarray, header: Mapping[str, MetadataValue] | None = None) -> bytes:
    """Serialize an array as a single-image FITS file (the array in the primary HDU).

    Parameters
    ----------
    image : numpy.ndarray
        Any shape with at least one axis; dtype int8, uint8, int16, uint16, int32, uint32,
        int64, uint64, float32 or float64.
    header : mapping, optional
        Metadata cards (``bool``, ``int``, ``float``, ``str`` values), written exactly as
        Exposure metadata and read back by :func:`read_image_header`.

    Raises
    ------
    repo.errors.FormatterError
        Not an array, an unsupported dtype, or header entries FITS cannot hold exactly.
    """
    if not isinstance(image, np.ndarray):
        raise FormatterError(
            f"Image storage class: expected a numpy array, got {type(image).__name__}"
        )
    if image.ndim == 0 or image.size == 0:
        raise FormatterError(f"Image storage class: cannot write an empty array {image.shape}")
    if (
        image.dtype.kind not in "iuf"
        or image.dtype.itemsize > 8
        or (image.dtype.kind == "f" and image.dtype.itemsize < 4)
    ):
        raise FormatterError(f"Image storage class: dtype {image.dtype} cannot be stored in FITS")
    if header is not None and not isinstance(header, Mapping):
        raise FormatterError(f"Image header must be a mapping, got {type(header).__name__}")
    metadata = dict(header or {})
    primary_header = fits.Header([("DRPTYPE", "Image", "drp storage class")])
    primary_header.extend(metadata_cards(metadata, "Image header"))
    primary = fits.PrimaryHDU(
        np.ascontiguousarray(image), header=_with_long_string_flag(primary_header)
    )
    return _to_bytes(fits.HDUList([primary]), checksum=True, verify="exception")


def _image_hdu(data: bytes, source: str) -> Any:
    hdul = _open(data, source, strict=True)
    hdu = hdul[0]
    drptype = hdu.header.get("DRPTYPE", "Image")
    if drptype != "Image":
        raise CorruptDatasetError(f"{source}: not an Image file (DRPTYPE={drptype!r})")
    if hdu.data is None:
        raise CorruptDatasetError(f"{source}: the primary HDU holds no image")
    return hdu


def read_image(data: bytes, source: str) -> np.ndarray:
    """Decode an image written by :func:`write_image` (same dtype and values, native order)."""
    return _native(_image_hdu(data, source).data)


def read_image_header(data: bytes, source: str) -> dict[str, Any]:
    """The header mapping given to :func:`write_image`, with the same keys, order and types."""
    return metadata_from_header(_image_hdu(data, source).header)


# --------------------------------------------------------------------------------------------
# Raw multi-extension files


def write_hdulist(hdul: fits.HDUList) -> bytes:
    """Serialize an ``HDUList`` as it is (cards are not fixed or reordered)."""
    if not isinstance(hdul, fits.HDUList):
        raise FormatterError(
            f"Fits storage class: expected an astropy HDUList, got {type(hdul).__name__}"
        )
    return _to_bytes(hdul, checksum=False, verify="ignore")


def read_hdulist(data: bytes, source: str) -> fits.HDUList:
    """Decode a FITS file into an ``HDUList`` with every header and data array loaded."""
    return _open(data, source, strict=False)
