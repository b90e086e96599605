"""Storage classes: what kind of Python object a dataset is and how it becomes bytes.

Each storage class names the file extension and the pair of functions (formatter) that turn an
object into bytes and back. The formatters live in :mod:`repo.formatters`.

=============== ===================================================== ==========
storage class   Python type                                           file
=============== ===================================================== ==========
Exposure        :class:`repo.exposure.Exposure`                       ``.fits``
Image           ``numpy.ndarray`` (2-D)                               ``.fits``
Fits            ``astropy.io.fits.HDUList`` (raw multi-extension)     ``.fits``
Catalog         astropy ``Table``, ``pyarrow.Table``, polars frame    ``.parquet``
StructuredData  JSON-compatible dict or list                          ``.json``
=============== ===================================================== ==========
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from .errors import DatasetTypeError


@dataclass(frozen=True)
class StorageClass:
    """A named kind of dataset with its file extension and formatter functions.

    The formatter module is imported on first use, so that reading a catalog never imports the
    FITS machinery and vice versa.
    """

    name: str
    extension: str
    module: str
    writer: str
    reader: str
    doc: str

    def write(self, obj: Any) -> bytes:
        """Serialize ``obj``; a wrong type raises :class:`repo.errors.FormatterError`."""
        return getattr(importlib.import_module(self.module), self.writer)(obj)

    def read(self, data: bytes, source: str) -> Any:
        """Decode bytes; corrupt content raises :class:`repo.errors.CorruptDatasetError`."""
        return getattr(importlib.import_module(self.module), self.reader)(data, source)


_FITS = "repo.formatters.fits"

STORAGE_CLASSES: dict[str, StorageClass] = {
    sc.name: sc
    for sc in (
        StorageClass(
            "Exposure",
            ".fits",
            _FITS,
            "write_exposure",
            "read_exposure",
            "image + mask + variance with WCS, PSF, photometric calibration, metadata",
        ),
        StorageClass("Image", ".fits", _FITS, "write_image", "read_image", "a single 2-D image"),
        StorageClass(
            "Fits",
            ".fits",
            _FITS,
            "write_hdulist",
            "read_hdulist",
            "a multi-extension FITS file kept as is (raw exposures)",
        ),
        StorageClass(
            "Catalog",
            ".parquet",
            "repo.formatters.parquet",
            "write_catalog",
            "read_catalog",
            "a table (astropy, Arrow or polars) as Parquet",
        ),
        StorageClass(
            "StructuredData",
            ".json",
            "repo.formatters.jsonfmt",
            "write_json",
            "read_json",
            "JSON-compatible configuration, summaries and reports",
        ),
    )
}


def get_storage_class(name: str) -> StorageClass:
    """Look up a storage class by name, with an error listing the known ones."""
    try:
        return STORAGE_CLASSES[name]
    except KeyError:
        raise DatasetTypeError(
            f"unknown storage class {name!r}; known: {', '.join(STORAGE_CLASSES)}"
        ) from None
