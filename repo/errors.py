"""Exception types raised by the data lake.

Every error the repository raises on bad input is one of these, with a message that names the
dataset, dataId, file or expression at fault, so that the CLI can print it as one clear line.
"""

from __future__ import annotations


class DrpError(Exception):
    """Base class of every error drp raises on purpose."""


class InvalidDataIdError(DrpError, ValueError):
    """A dataId is malformed: unknown key, missing required key, bad value type or unsafe value."""


class DimensionRecordError(DrpError, ValueError):
    """A dimension record is missing, malformed or conflicts with the one already stored."""


class DatasetTypeError(DrpError, ValueError):
    """A dataset type is unknown, or is being registered with a definition that conflicts."""


class DatasetNotFoundError(DrpError, LookupError):
    """No dataset matches the requested dataset type, dataId and collections."""


class DatasetExistsError(DrpError):
    """A dataset with the same (dataset type, run, dataId) is already in the repository."""


class CollectionError(DrpError, ValueError):
    """A collection name is invalid, unknown, or used in a way its kind does not allow."""


class StorageError(DrpError, OSError):
    """Reading or writing the underlying storage failed (missing file, permission, connection)."""


class CorruptDatasetError(DrpError):
    """A stored file cannot be decoded as its storage class (truncated or corrupted FITS/Parquet)."""


class FormatterError(DrpError, TypeError):
    """An object of the wrong Python type was handed to a storage class, or cannot be written."""


class WhereSyntaxError(DrpError, ValueError):
    """A where-expression could not be parsed; the message shows the position of the error."""


class RepositoryError(DrpError):
    """The repository itself is missing, not a drp repository, or of an unsupported version."""
