"""Ingest: register existing FITS files as datasets, with dataIds from their headers.

The instrument that wrote a file is found from its primary header (``INSTRUME``) unless given;
the instrument's translator (:meth:`repo.instruments.base.Instrument.ingest_items`) says which
dataset each file (or group of files) becomes and which dimension records it needs. Files kept as
they are can be copied into the repository, hard-linked, or left in place (``direct``); files that
must be converted (DECam's image + weight + mask triplets become one Exposure) are always written.
Everything is committed together: an ingest that fails leaves the repository as it was.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from astropy.io import fits

from .errors import DrpError, StorageError
from .formatters.fits import read_hdulist
from .instruments.base import IngestItem, Instrument, get_instrument, registered_instruments
from .registry import DatasetRef
from .repository import Repository, ensure_progress

TRANSFER_MODES = ("copy", "link", "direct")


def instrument_for_file(path: str) -> Instrument:
    """The registered instrument whose header signature matches a file's primary header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one clear error rather than astropy's warnings
            header = fits.getheader(path, 0)
    except FileNotFoundError:
        raise StorageError(f"{path}: no such file") from None
    except Exception as exc:
        raise DrpError(f"{path}: not a readable FITS file ({exc})") from exc
    for cls in registered_instruments().values():
        if cls.matches_file(path, header):
            return cls()
    raise DrpError(
        f"{path}: no registered instrument recognizes INSTRUME={header.get('INSTRUME')!r}; "
        f"pass --instrument (known: {', '.join(registered_instruments())})"
    )


def ingest(
    repo: Repository,
    paths: Sequence[str],
    *,
    run: str,
    instrument: str | None = None,
    transfer: str = "copy",
    mode: str = "error",
) -> list[DatasetRef]:
    """Ingest files into ``run``; returns the refs of the datasets created (or found, on skip).

    Parameters
    ----------
    repo
        The repository.
    paths
        FITS files to ingest.
    run
        RUN collection to ingest into.
    instrument
        Instrument name; by default found from each file's header.
    transfer
        ``copy`` (default), ``link`` (hard link, local repositories only) or ``direct`` (record
        the file where it is).
    mode
        What to do with a dataset that exists already: ``error`` or ``skip``.
    """
    if transfer not in TRANSFER_MODES:
        raise DrpError(f"transfer must be one of {', '.join(TRANSFER_MODES)}, not {transfer!r}")
    if not paths:
        raise DrpError("nothing to ingest: no files given")
    by_instrument: dict[str, tuple[Instrument, list[str]]] = {}
    for path in paths:
        if not os.path.isfile(path):
            raise StorageError(f"{path}: no such file")
        inst = get_instrument(instrument) if instrument else instrument_for_file(path)
        by_instrument.setdefault(inst.name, (inst, []))[1].append(path)
    items: list[tuple[Instrument, IngestItem]] = []
    for inst, inst_paths in by_instrument.values():
        items.extend((inst, item) for item in inst.ingest_items(inst_paths))
    for _inst, item in items:
        if item.source is None and transfer != "copy":
            raise DrpError(
                f"{', '.join(item.sources)}: these files are converted into one "
                f"{item.storage_class} dataset, which needs --transfer copy"
            )
    refs = []
    with repo.transaction():
        for inst, _files in by_instrument.values():
            repo.register_instrument(inst)
        for _inst, item in ensure_progress(items, total=len(items), desc="ingest"):
            refs.append(_ingest_one(repo, item, run=run, transfer=transfer, mode=mode))
    return refs


def _ingest_one(
    repo: Repository, item: IngestItem, *, run: str, transfer: str, mode: str
) -> DatasetRef:
    repo.register_dataset_type(item.dataset_type, item.dimensions, item.storage_class)
    for element, records in item.records.items():
        repo.insert_dimension_records(element, records)
    if item.make is not None:
        return repo.put(item.make(), item.dataset_type, item.data_id, run=run, mode=mode)
    ref = repo.make_ref(item.dataset_type, item.data_id, run)
    with open(item.source, "rb") as f:
        data = f.read()
    read_hdulist(data, item.source)  # every HDU decoded: a truncated file is refused here
    if transfer == "direct":
        return repo.record_external(ref, os.path.abspath(item.source), data, mode=mode)
    return repo.store_bytes(
        ref, data, mode=mode, link_from=item.source if transfer == "link" else None
    )
