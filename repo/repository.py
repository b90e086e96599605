"""The repository: put, get, find and query datasets in a file-based data lake.

:class:`Repository` joins the registry (what exists, :mod:`repo.registry`) and the storage (where the
bytes are, :mod:`repo.storage`) through the storage classes (how objects become bytes). A dataset is
identified by (dataset type, run, dataId); its id and its path follow from those alone::

    <run>/<datasetType>/instrument=SimCam/band=r/visit=12/detector=3/<datasetType>_SimCam_r_12_3.parquet

so the lake can be read without drp (DuckDB, polars and pyarrow understand the hive partitions).

A put writes the file first (atomically, exclusively) and then commits its record; a crash in
between leaves only an unrecorded file, which ``drp verify`` reports and a later put of the same
dataset replaces. Puts inside :meth:`Repository.transaction` are committed together as one registry
file, which is both the unit of atomicity of a quantum's outputs and much faster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from .dimensions import (
    DIMENSION_NAMES,
    ELEMENTS,
    PARTITION_ORDER,
    UNIVERSE,
    DataId,
    DimensionGroup,
)
from .errors import (
    CollectionError,
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    DimensionRecordError,
    DrpError,
    RepositoryError,
    StorageError,
)
from .registry import (
    DATASET_SCHEMA,
    REGISTRY_DIR,
    Collection,
    DatasetRef,
    DatasetType,
    Provenance,
    Registry,
    check_collection_name,
    dataset_id_for,
)
from .storage import TEMP_PREFIX, Storage
from .storage_classes import get_storage_class
from .where import Column, compile_where, parse_where, referenced_identifiers

log = logging.getLogger(__name__)

REPO_CONFIG = "drp-repo.json"
REPO_FORMAT_VERSION = 1
PUT_MODES = ("error", "skip", "overwrite")
#: Default limits of a :meth:`Repository.sql` query: DuckDB memory, and seconds.
SQL_MEMORY_LIMIT = "4GB"
SQL_TIMEOUT = 300.0

_SOFTWARE_PACKAGES = (
    "drp",
    "numpy",
    "scipy",
    "astropy",
    "sep",
    "pyarrow",
    "polars",
    "duckdb",
    "fsspec",
    "s3fs",
    "reproject",
    "galsim",
)


@cache
def software_versions() -> dict[str, str]:
    """Versions of drp and the libraries whose results it records, for provenance."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for package in _SOFTWARE_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def checksum_of(data: bytes) -> str:
    """The checksum stored for every file: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class VerifyReport:
    """What ``verify`` found: problems with recorded files, and unrecorded files.

    ``temporary`` are the temporary files of writes (``.tmp-*``): a write in progress, or the
    leftover of one that was killed. They are listed but are not a fault: no record points at
    them and no reader ever opens them.
    """

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    bad_size: list[str] = field(default_factory=list)
    bad_checksum: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    #: The recorded datasets whose file is missing (what ``missing`` lists).
    missing_refs: list[DatasetRef] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.bad_size or self.bad_checksum or self.orphans)


class Repository:
    """A drp data lake at a path or URL.

    Parameters
    ----------
    url
        Local path, ``file://``, ``s3://bucket/prefix`` or ``memory://`` URL of an existing
        repository (see :meth:`create`).
    storage_options
        fsspec/s3fs options such as ``endpoint_url``, ``key``, ``secret``.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.storage = Storage(url, storage_options)
        try:
            config = json.loads(self.storage.get_bytes(REPO_CONFIG))
        except StorageError as exc:
            if "no such file" in str(exc):
                raise RepositoryError(
                    f"{self.storage.url} is not a drp repository (no {REPO_CONFIG}); "
                    "create one with `drp create`"
                ) from None
            raise
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{self.storage.uri(REPO_CONFIG)} is corrupt: {exc}") from exc
        if config.get("format") != "drp-repo" or config.get("version") != REPO_FORMAT_VERSION:
            raise RepositoryError(f"{self.storage.url}: unsupported repository format {config}")
        self.config = config
        self.registry = Registry(self.storage)
        self._pending: list[dict[str, Any]] | None = None
        self._written: list[str] = []
        self._overwritten: list[DatasetRef] = []

    @classmethod
    def create(
        cls, url: str, storage_options: Mapping[str, Any] | None = None, *, exist_ok: bool = False
    ) -> Repository:
        """Create an empty repository at ``url`` and return it."""
        storage = Storage(url, storage_options)
        config = {
            "format": "drp-repo",
            "version": REPO_FORMAT_VERSION,
            "dimensions": list(DIMENSION_NAMES),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            storage.put_bytes(REPO_CONFIG, json.dumps(config, indent=1).encode(), exclusive=True)
        except FileExistsError:
            if not exist_ok:
                raise RepositoryError(f"{storage.url} is already a drp repository") from None
        return cls(url, storage_options)

    def __repr__(self) -> str:
        return f"Repository({self.storage.url!r})"

    # -- definitions -----------------------------------------------------------------------------

    def register_dataset_type(
        self, name: str, dimensions: Iterable[str], storage_class: str
    ) -> DatasetType:
        """Register (or confirm) a dataset type; a conflicting definition is an error."""
        dataset_type = DatasetType(name, tuple(dimensions), storage_class)
        self.registry.register_dataset_type(dataset_type)
        return dataset_type

    def register_instrument(self, instrument: Any) -> None:
        """Insert the instrument, band, physical_filter and detector records of an instrument."""
        self.registry.insert_dimension_records("instrument", [instrument.instrument_record()])
        self.registry.insert_dimension_records("band", instrument.band_records())
        self.registry.insert_dimension_records(
            "physical_filter", instrument.physical_filter_records()
        )
        self.registry.insert_dimension_records("detector", instrument.detector_records())

    def insert_dimension_records(
        self, element: str, records: Iterable[Mapping[str, Any]], *, update: bool = False
    ) -> int:
        """Store dimension records (see :meth:`Registry.insert_dimension_records`)."""
        return self.registry.insert_dimension_records(element, records, update=update)

    def _dataset_type(self, dataset_type: str | DatasetType) -> DatasetType:
        if isinstance(dataset_type, DatasetType):
            return dataset_type
        return self.registry.get_dataset_type(dataset_type)

    # -- naming ----------------------------------------------------------------------------------

    @staticmethod
    def path_for(dataset_type: DatasetType, data_id: DataId, run: str) -> str:
        """The relative path of a dataset: run, type, hive partitions, then a file name."""
        group = dataset_type.group
        names = set(group.names)
        keys = [k for k in PARTITION_ORDER if k in names]
        keys += [k for k in group.required if k not in keys]
        parts = [run, dataset_type.name, *(f"{k}={data_id[k]}" for k in keys)]
        stem = "_".join([dataset_type.name, *(str(data_id[k]) for k in keys)])
        return (
            "/".join(parts) + "/" + stem + get_storage_class(dataset_type.storage_class).extension
        )

    def make_ref(
        self, dataset_type: str | DatasetType, data_id: Mapping[str, Any], run: str
    ) -> DatasetRef:
        """The ref a dataset would have (validated dataId with implied values, id, path)."""
        dataset_type = self._dataset_type(dataset_type)
        check_collection_name(run)
        expanded = self.registry.expand_data_id(
            data_id, dataset_type.group, what=f"{dataset_type.name} dataId"
        )
        dataset_id = dataset_id_for(dataset_type.name, run, expanded, dataset_type.group.required)
        return DatasetRef(
            dataset_type, expanded, run, dataset_id, self.path_for(dataset_type, expanded, run)
        )

    # -- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit every put inside the block as one registry file, or none of them.

        On an exception the files written inside the block are deleted and nothing is recorded.
        """
        if self._pending is not None:
            yield  # nested: the outer transaction commits
            return
        self._pending, self._written, self._overwritten = [], [], []
        try:
            yield
            self.registry.commit_datasets(self._pending)
        except BaseException:
            for relpath in self._written:
                with contextlib.suppress(DrpError):
                    self.storage.delete(relpath)
            if self._overwritten:
                # their old content was replaced and is now deleted: forget them too, so that
                # no record is ever left without its file
                self.remove_datasets(self._overwritten)
            raise
        finally:
            self._pending, self._written, self._overwritten = None, [], []

    def put(
        self,
        obj: Any,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str,
        mode: str = "error",
        provenance: Provenance | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        """Store ``obj`` as a dataset and record it.

        Parameters
        ----------
        obj
            The object, of the Python type of the dataset type's storage class.
        dataset_type
            Name (or object) of a registered dataset type.
        data_id
            Values of the dataset type's dimensions (implied ones are filled in); keyword
            arguments are merged in.
        run
            The RUN collection to put into (created if needed).
        mode
            What to do if the dataset exists in ``run``: ``error`` (default), ``skip`` or
            ``overwrite``.
        provenance
            Producing stage and quantum, input ids and config hash.
        """
        ref = self.make_ref(dataset_type, {**(data_id or {}), **data_id_kwargs}, run)
        data = get_storage_class(ref.dataset_type.storage_class).write(obj)
        return self.store_bytes(ref, data, mode=mode, provenance=provenance)

    def store_bytes(
        self,
        ref: DatasetRef,
        data: bytes,
        *,
        mode: str = "error",
        provenance: Provenance | None = None,
        link_from: str | None = None,
    ) -> DatasetRef:
        """Write already-serialized bytes as the file of ``ref`` and record it (see :meth:`put`).

        With ``link_from`` the file is hard-linked from that local path instead of written (ingest
        with ``--transfer link``); ``data`` must be its content.
        """
        if mode not in PUT_MODES:
            raise DrpError(f"put mode must be one of {', '.join(PUT_MODES)}, not {mode!r}")
        self.registry.register_run(ref.run)
        if self._pending is not None and any(r["dataset_id"] == ref.id for r in self._pending):
            if mode == "skip":
                return ref
            if mode == "error":
                raise DatasetExistsError(f"{ref} was already put in this transaction")
        exists = False
        if link_from is not None:
            exists = self.storage.exists(ref.path)
        elif mode == "overwrite":
            if self._pending is not None and self.storage.exists(ref.path):
                self._overwritten.append(ref)
            self.storage.put_bytes(ref.path, data)
        else:
            try:
                self.storage.put_bytes(ref.path, data, exclusive=True)
            except FileExistsError:
                exists = True
        if exists:
            existing = self._recorded(ref)
            if existing is not None and mode == "skip":
                return existing
            if existing is not None and mode == "error":
                raise DatasetExistsError(
                    f"{ref} already exists (id {ref.id}); put with mode='skip' or 'overwrite' "
                    "(drp ingest --skip-existing keeps what exists)"
                )
            if existing is None:
                log.warning("replacing unrecorded leftover file %s", self.storage.uri(ref.path))
            if link_from is None:
                self.storage.put_bytes(ref.path, data)
        if link_from is not None:
            self.storage.put_file(ref.path, link_from, mode="link")
        if self._pending is not None:
            self._written.append(ref.path)
        row = self._row(ref, len(data), checksum_of(data), provenance)
        if self._pending is not None:
            self._pending.append(row)
        else:
            self.registry.commit_datasets([row])
        return DatasetRef(
            ref.dataset_type, ref.data_id, ref.run, ref.id, ref.path, len(data), row["checksum"]
        )

    def _recorded(self, ref: DatasetRef) -> DatasetRef | None:
        """The recorded dataset with ref's id, looking at the latest registry state."""
        current = self.registry.current_datasets(refresh=True)
        rows = current.filter(pl.col("dataset_id") == ref.id)
        if rows.is_empty():
            return None
        return self._refs_from_frame(rows)[0]

    @staticmethod
    def _row(
        ref: DatasetRef, size: int, checksum: str, provenance: Provenance | None
    ) -> dict[str, Any]:
        provenance = provenance or Provenance()
        row: dict[str, Any] = {name: ref.data_id.get(name) for name in DIMENSION_NAMES}
        row.update(
            op="put",
            dataset_id=ref.id,
            dataset_type=ref.dataset_type.name,
            run=ref.run,
            path=ref.path,
            size=size,
            checksum=checksum,
            timestamp=time.time_ns(),
            producer=provenance.producer,
            quantum_id=provenance.quantum_id,
            input_ids=list(provenance.input_ids),
            config_hash=provenance.config_hash,
            software=json.dumps(dict(provenance.software or software_versions()), sort_keys=True),
        )
        return row

    def record_external(
        self,
        ref: DatasetRef,
        uri: str,
        data: bytes | None = None,
        *,
        mode: str = "error",
        provenance: Provenance | None = None,
    ) -> DatasetRef:
        """Record a file left in place outside the repository (ingest with ``direct``).

        ``mode`` says what to do if the dataset is recorded already: ``error``, ``skip`` or
        ``overwrite`` (record the new location).
        """
        if "://" not in uri:
            uri = "file://" + os.path.abspath(uri)
        existing = self._recorded(ref)
        if existing is not None and mode == "skip":
            return existing
        if existing is not None and mode == "error":
            raise DatasetExistsError(
                f"{ref} already exists (id {ref.id}); put with mode='skip' or 'overwrite' "
                "(drp ingest --skip-existing keeps what exists)"
            )
        if data is None:
            data = self._read_external(uri)
        self.registry.register_run(ref.run)
        external = DatasetRef(ref.dataset_type, ref.data_id, ref.run, ref.id, uri)
        row = self._row(external, len(data), checksum_of(data), provenance)
        if self._pending is not None:
            self._pending.append(row)
        else:
            self.registry.commit_datasets([row])
        return DatasetRef(
            ref.dataset_type, ref.data_id, ref.run, ref.id, uri, len(data), row["checksum"]
        )

    # -- finding and reading ---------------------------------------------------------------------

    def _search_runs(self, collections: str | Sequence[str] | None) -> list[str]:
        if collections is None:
            return [c.name for c in self.registry.collections() if c.type == "RUN"]
        if isinstance(collections, str):
            collections = [collections]
        return self.registry.flatten(collections)

    def find_dataset(
        self,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        """The first dataset matching type and dataId in the collections' search order.

        With ``collections=None`` every run is searched and a match in more than one run is an
        error (say which collection to use).
        """
        dataset_type = self._dataset_type(dataset_type)
        values = {**(data_id or {}), **data_id_kwargs}
        expanded = self.registry.expand_data_id(
            values, dataset_type.group, what=f"{dataset_type.name} dataId"
        )
        runs = self._search_runs(collections)
        ids = [
            dataset_id_for(dataset_type.name, run, expanded, dataset_type.group.required)
            for run in runs
        ]
        for refresh in (False, True):
            current = self.registry.current_datasets(refresh=refresh)
            found = current.filter(pl.col("dataset_id").is_in(ids))
            if not found.is_empty():
                break
        if found.is_empty():
            where = (
                f"collections {list(collections) if not isinstance(collections, str) else [collections]}"
                if collections
                else "any run"
            )  # noqa: E501
            raise DatasetNotFoundError(
                f"no {dataset_type.name} dataset with dataId {dict(expanded)} in {where}"
            )
        refs = {ref.run: ref for ref in self._refs_from_frame(found)}
        if collections is None and len(refs) > 1:
            raise DatasetNotFoundError(
                f"{dataset_type.name} {dict(expanded)} exists in several runs "
                f"({', '.join(sorted(refs))}); say which with collections"
            )
        return next(refs[run] for run in runs if run in refs)

    def get(
        self,
        dataset_type: str | DatasetType | DatasetRef,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        **data_id_kwargs: Any,
    ) -> Any:
        """Read a dataset (by ref, or by type + dataId in collections) as a Python object."""
        if isinstance(dataset_type, DatasetRef):
            ref = dataset_type
        else:
            ref = self.find_dataset(
                dataset_type, data_id, collections=collections, **data_id_kwargs
            )
        return self.read(ref)

    def read(self, ref: DatasetRef) -> Any:
        """Read the file of a recorded ref and decode it with its storage class."""
        if ref.path is None:
            ref = self.find_dataset(ref.dataset_type, ref.data_id, collections=ref.run)
        data = self._read_bytes(ref)
        source = f"{ref.dataset_type.name} {dict(ref.data_id)} in {ref.run} ({self._uri(ref.path)})"
        if ref.size is not None and len(data) != ref.size:
            raise CorruptDatasetError(
                f"{source}: file is {len(data)} bytes but was recorded as {ref.size}"
            )
        return get_storage_class(ref.dataset_type.storage_class).read(data, source)

    def _uri(self, path: str) -> str:
        return path if "://" in path else self.storage.uri(path)

    def _read_bytes(self, ref: DatasetRef) -> bytes:
        path = ref.path
        try:
            if "://" in path:
                return self._read_external(path)
            return self.storage.get_bytes(path)
        except (StorageError, FileNotFoundError) as exc:
            raise StorageError(
                f"{ref.dataset_type.name} {dict(ref.data_id)} in {ref.run}: recorded file "
                f"{self._uri(path)} is missing or unreadable ({exc}); run `drp verify`"
            ) from exc

    def _read_external(self, uri: str) -> bytes:
        """Bytes of a file outside the repository (ingested with ``direct``)."""
        import fsspec

        same = uri.startswith(self.storage.protocol + "://")
        try:
            with fsspec.open(uri, "rb", **(self.storage.storage_options if same else {})) as f:
                return f.read()
        except FileNotFoundError as exc:
            raise StorageError(f"{uri}: no such file") from exc

    # -- queries ---------------------------------------------------------------------------------

    def _refs_from_frame(self, frame: pl.DataFrame) -> list[DatasetRef]:
        refs = []
        types: dict[str, DatasetType] = {}
        for row in frame.iter_rows(named=True):
            name = row["dataset_type"]
            dataset_type = types.get(name) or self.registry.get_dataset_type(name)
            types[name] = dataset_type
            keys = dataset_type.group.names
            data_id = DataId.from_ordered(keys, [row[k] for k in keys])
            refs.append(
                DatasetRef(
                    dataset_type,
                    data_id,
                    row["run"],
                    row["dataset_id"],
                    row["path"],
                    row["size"],
                    row["checksum"],
                )
            )
        return refs

    def _where_columns(self, alias: str, available: Iterable[str]) -> dict[str, Column]:
        columns = {name: Column(f'{alias}."{name}"', UNIVERSE[name].dtype) for name in available}
        for element in DIMENSION_NAMES:
            dim = UNIVERSE[element]
            for f in dim.fields:
                columns[f"{element}.{f.name}"] = Column(f'"rec_{element}"."{f.name}"', f.dtype)
        return columns

    @staticmethod
    def _record_joins(identifiers: Iterable[str], alias: str) -> str:
        """LEFT JOINs of the record tables that a where-expression's ``element.field`` uses."""
        joins = []
        for element in sorted({i.split(".")[0] for i in identifiers if "." in i}):
            dim = UNIVERSE[element]
            cond = " AND ".join(
                [f'{alias}."{r}" = "rec_{element}"."{r}"' for r in dim.requires]
                + [f'{alias}."{element}" = "rec_{element}"."{dim.key_field}"']
            )
            joins.append(f'LEFT JOIN "_rec_{element}" AS "rec_{element}" ON {cond}')
        return " ".join(joins)

    def query_datasets(
        self,
        dataset_types: str | Sequence[str] | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        where: str = "",
        binds: Mapping[str, Any] | None = None,
        find_first: bool = True,
    ) -> list[DatasetRef]:
        """Datasets of the given types in the collections whose dataIds satisfy ``where``.

        With ``find_first`` (default) and several collections, only the first match in search
        order is returned for each (dataset type, dataId).
        """
        if isinstance(dataset_types, str):
            dataset_types = [dataset_types]
        types = (
            [self.registry.get_dataset_type(t) for t in dataset_types]
            if dataset_types is not None
            else self.registry.dataset_types()
        )
        runs = self._search_runs(collections)
        if not types or not runs:
            return []
        node = parse_where(where)
        columns = self._where_columns("d", DIMENSION_NAMES)
        where_sql, params = compile_where(node, columns, binds)
        joins = self._record_joins(referenced_identifiers(node), "d")
        partition = ", ".join(f'd."{n}"' for n in DIMENSION_NAMES)
        find_first = find_first and len(runs) > 1  # one run cannot hold a dataset twice
        qualify = (
            (
                f"QUALIFY row_number() OVER (PARTITION BY d.dataset_type, {partition} "
                "ORDER BY list_position(?, d.run)) = 1"
            )
            if find_first
            else ""
        )
        sql = (
            f"SELECT d.* FROM datasets d {joins} "
            "WHERE list_contains(?, d.dataset_type) AND list_contains(?, d.run) "
            f"AND ({where_sql}) {qualify} "
            f"ORDER BY d.dataset_type, {partition}, list_position(?, d.run)"
        )
        all_params = [[t.name for t in types], runs, *params]
        if find_first:
            all_params.append(runs)
        all_params.append(runs)
        elements = sorted({i.split(".")[0] for i in referenced_identifiers(node) if "." in i})
        cold = self.registry.datasets.unread_files()
        if cold is not None:
            table = self._query_unread(
                cold, elements, joins, where_sql, qualify, partition, all_params
            )
            if table is not None:
                return self._refs_from_frame(pl.from_arrow(table))
        con = self.registry.connection(["datasets", *elements])
        table = con.sql(sql, params=all_params).to_arrow_table()
        return self._refs_from_frame(pl.from_arrow(table))

    def _query_unread(
        self,
        files: tuple[list[str], pa.Table | None],
        elements: list[str],
        joins: str,
        where_sql: str,
        qualify: str,
        partition: str,
        params: list[Any],
    ) -> pa.Table | None:
        """:meth:`query_datasets` for a process that has not read the registry: DuckDB scans
        the registry files with the where-clause applied before the latest row of each dataset
        is kept (exact: all rows of a dataset id have its dataId, type and run), reading only
        the Parquet row groups that may match. 10^6 datasets: ~40-70 ms against ~0.9 s to
        load them. None (the caller loads the registry) if a file vanished meanwhile (a
        compaction) or the files are of an older layout."""
        merged, commits = files
        parts = []
        if merged:
            parts.append("SELECT * FROM read_parquet(?, union_by_name = true)")
        if commits is not None:
            parts.append("SELECT * FROM _unread_commits")
        if not parts:
            return pa.Table.from_pylist([], schema=DATASET_SCHEMA)
        con = self.registry.connection(elements)
        sql = (
            f"WITH raw AS ({' UNION ALL BY NAME '.join(parts)}), "
            f"hits AS (SELECT d.* FROM raw d {joins} "
            "WHERE list_contains(?, d.dataset_type) AND list_contains(?, d.run) "
            f"AND ({where_sql})), "
            "latest AS (SELECT * FROM hits QUALIFY row_number() OVER "
            "(PARTITION BY dataset_id ORDER BY timestamp DESC) = 1) "
            f"SELECT d.* FROM latest d WHERE d.op = 'put' {qualify} "
            f"ORDER BY d.dataset_type, {partition}, list_position(?, d.run)"
        )
        try:
            if commits is not None:
                con.register("_unread_commits", commits)
            table = con.sql(sql, params=[merged] * bool(merged) + params).to_arrow_table()
        except duckdb.Error as exc:
            log.debug("cold query fell back to loading the registry: %s", exc)
            return None
        finally:
            if commits is not None:
                con.unregister("_unread_commits")
        if not set(DATASET_SCHEMA.names) <= set(table.column_names):
            return None  # registry files of an older layout: the loaded state fills them in
        return table.select(DATASET_SCHEMA.names).cast(DATASET_SCHEMA)

    def query_data_ids(
        self,
        dimensions: Iterable[str],
        *,
        where: str = "",
        binds: Mapping[str, Any] | None = None,
        datasets: str | Sequence[str] | None = None,
        collections: str | Sequence[str] | None = None,
    ) -> list[DataId]:
        """DataIds over ``dimensions`` (with implied values) that satisfy ``where``.

        Without ``datasets`` they come from the dimension records (every combination that the
        records relate, e.g. each visit with each detector of its instrument); with ``datasets``
        only dataIds of existing datasets of those types in ``collections`` count.
        """
        group = DimensionGroup.from_names(dimensions)
        node = parse_where(where)
        if datasets is not None:
            refs = self.query_datasets(datasets, collections=collections, where=where, binds=binds)
            ids = {ref.data_id.subset(group.names) for ref in refs}
            return sorted(ids, key=lambda d: tuple(d.get(n) for n in group.required))
        present: dict[str, str] = {}  # dimension -> view that provides it
        from_parts: list[str] = []
        for name in group.required:
            view_cols = [*UNIVERSE[name].requires, name, *UNIVERSE[name].implies]
            shared = [c for c in view_cols if c in present]
            if not from_parts:
                from_parts.append(f'"{name}"')
            elif shared:
                cond = " AND ".join(f'"{present[c]}"."{c}" = "{name}"."{c}"' for c in shared)
                from_parts.append(f'JOIN "{name}" ON {cond}')
            else:
                from_parts.append(f'CROSS JOIN "{name}"')
            for c in view_cols:
                present.setdefault(c, name)
        columns = {
            n: Column(f'"{present[n]}"."{n}"', UNIVERSE[n].dtype)
            for n in group.names
            if n in present
        }
        for element in group.required:
            for f in UNIVERSE[element].fields:
                columns[f"{element}.{f.name}"] = Column(f'"{element}"."{f.name}"', f.dtype)
        where_sql, params = compile_where(node, columns, binds)
        select = ", ".join(f'{columns[n].sql} AS "{n}"' for n in group.names if n in present)
        if not from_parts:
            return []
        order = ", ".join(columns[n].sql for n in group.required if n in present)
        sql = (
            f"SELECT DISTINCT {select} FROM {' '.join(from_parts)} WHERE {where_sql} "
            f"ORDER BY {order}"
        )
        con = self.registry.connection(group.required)
        rows = con.execute(sql, params).fetchall()
        names = [n for n in group.names if n in present]
        return [DataId(dict(zip(names, row, strict=True))) for row in rows]

    def query_dimension_records(
        self, element: str, *, where: str = "", binds: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Records of one dimension element that satisfy ``where``."""
        if element not in ELEMENTS:
            raise DimensionRecordError(
                f"unknown dimension element {element!r}; known: {', '.join(ELEMENTS)}"
            )
        dim = ELEMENTS[element]
        node = parse_where(where)
        own = (element,) if dim.key_field else ()
        columns = {
            n: Column(f'"{element}"."{n}"', UNIVERSE[n].dtype)
            for n in (*dim.requires, *own, *dim.implies)
        }
        for f in dim.fields:
            columns[f"{element}.{f.name}"] = Column(f'"{element}"."{f.name}"', f.dtype)
            columns.setdefault(f.name, columns[f"{element}.{f.name}"])
        where_sql, params = compile_where(node, columns, binds)
        order = ", ".join(f'"{c}"' for c in (*dim.requires, *own))
        select = ", ".join(f'"{c}"' for c in dim.record_columns)
        con = self.registry.connection([element])
        cursor = con.execute(
            f'SELECT {select} FROM "{element}" WHERE {where_sql} ORDER BY {order}', params
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def collections(self) -> list[Collection]:
        """All RUN and CHAINED collections."""
        return self.registry.collections()

    # -- SQL -------------------------------------------------------------------------------------

    def sql(
        self,
        query: str,
        *,
        collections: str | Sequence[str] | None = None,
        memory_limit: str = SQL_MEMORY_LIMIT,
        timeout: float = SQL_TIMEOUT,
    ) -> pa.Table:
        """Run one read-only SELECT with DuckDB and return an Arrow table.

        Views: ``datasets`` (the registry), one per dimension element (``visit``, ``detector``,
        ``tract`` ...), and one per Catalog dataset type over its Parquet files in the given
        collections (all runs by default), with the hive partition columns (``band``, ``visit``,
        ``detector`` ...).

        The query reads those and nothing else: once the views are made, DuckDB may open only
        the catalogs' own files (``allowed_paths``), every other file system operation
        (``read_csv('/etc/passwd')``, ``glob``, ``COPY``, ``ATTACH``, installing extensions) is
        refused, and the configuration is locked so that the query cannot lift that. It runs
        under ``memory_limit`` (a DuckDB size such as ``'2GB'``), is interrupted after
        ``timeout`` seconds, and spills to a scratch directory of its own, removed afterwards.
        """
        con = self.registry.connection(fresh=True)
        scratch = tempfile.mkdtemp(prefix="drp-sql-")
        try:
            try:
                statements = con.extract_statements(query)
            except duckdb.Error as exc:
                raise DrpError(f"SQL error: {exc}") from None
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise DrpError("drp sql runs exactly one read-only SELECT statement")
            uris = self._add_catalog_views(con, collections)
            try:
                con.execute("SET memory_limit = ?", [memory_limit])
            except duckdb.Error as exc:
                raise DrpError(f"memory limit {memory_limit!r}: {exc}") from None
            con.execute("SET temp_directory = ?", [scratch])
            con.execute("SET allowed_paths = ?", [uris])
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            timer = threading.Timer(timeout, con.interrupt)
            timer.start()
            try:
                return con.sql(query).to_arrow_table()
            except duckdb.InterruptException:
                raise DrpError(f"SQL query stopped after its time limit of {timeout:g} s") from None
            except duckdb.OutOfMemoryException as exc:
                first = str(exc).splitlines()[0]
                raise DrpError(
                    f"SQL query needs more than its memory limit of {memory_limit} ({first})"
                ) from None
            except duckdb.PermissionException as exc:
                raise DrpError(
                    f"SQL error: {exc} (queries read the repository's catalogs and registry "
                    "views only)"
                ) from None
            except duckdb.Error as exc:
                raise DrpError(f"SQL error: {exc}") from None
            finally:
                timer.cancel()
        finally:
            con.close()
            shutil.rmtree(scratch, ignore_errors=True)

    def _add_catalog_views(
        self, con: duckdb.DuckDBPyConnection, collections: str | Sequence[str] | None
    ) -> list[str]:
        """A view per Catalog dataset type; returns the files they read."""
        catalog_types = [
            t.name for t in self.registry.dataset_types() if t.storage_class == "Catalog"
        ]
        if not catalog_types:
            return []
        if not self.storage.is_local:
            con.register_filesystem(self.storage.fs)
        refs = self.query_datasets(catalog_types, collections=collections)
        by_type: dict[str, list[str]] = {}
        for ref in refs:
            by_type.setdefault(ref.dataset_type.name, []).append(self._duckdb_uri(ref.path))
        for name, uris in by_type.items():
            relation = con.read_parquet(uris, hive_partitioning=True, union_by_name=True)
            relation.create_view(name)
        return [uri for uris in by_type.values() for uri in uris]

    def _duckdb_uri(self, path: str) -> str:
        if "://" in path or self.storage.is_local:
            return self._uri(path)
        return f"{self.storage.protocol}://{self.storage.full_path(path).lstrip('/')}"

    # -- maintenance -----------------------------------------------------------------------------

    def remove_datasets(self, refs: Sequence[DatasetRef], *, delete_files: bool = True) -> int:
        """Forget datasets and delete their files (files left in place by ingest are kept).

        With ``delete_files=False`` only the records go (``drp verify --forget-missing``: the
        records of files that are lost, so that a run makes those datasets again).
        """
        if not refs:
            return 0
        now = time.time_ns()
        rows = []
        for ref in refs:
            row = self._row(ref, ref.size or 0, ref.checksum or "", None)
            row.update(op="remove", timestamp=now, path=ref.path)
            rows.append(row)
        self.registry.commit_datasets(rows)  # records first: never a record without its file
        for ref in refs:
            if delete_files and ref.path and "://" not in ref.path:
                self.storage.delete(ref.path)
        return len(refs)

    def register_orphans(self, report: VerifyReport) -> tuple[list[DatasetRef], list[str]]:
        """Record again the orphans of a verify report whose path is one drp writes.

        A dataset's path follows from its dataset type, run and dataId (:meth:`path_for`), so
        a file left without its record (a registry file moved aside, say) can be recorded again
        when its path reads back as exactly that, its dataset type is registered and its content
        decodes. Its provenance comes back from the quantum record that lists it as an output
        (producer, quantum, inputs, config hash, software); without one it is ``recovered``.
        Returns the refs recorded and the orphans that could not be (left in place).
        """
        prefix = self.storage.uri("x")[:-1]
        recorded, left = [], []
        made_by = {}
        quanta = self.registry.current_quanta().filter(pl.col("status") == "done")
        for row in quanta.select("quantum_id", "output_ids").iter_rows():
            for output_id in row[1] or ():
                made_by[output_id] = row[0]
        with self.transaction():
            for uri in report.orphans:
                relpath = uri[len(prefix) :]
                ref = self._ref_from_path(relpath)
                if ref is None:
                    left.append(uri)
                    continue
                data = self.storage.get_bytes(relpath)
                try:
                    get_storage_class(ref.dataset_type.storage_class).read(data, uri)
                except DrpError:
                    left.append(uri)
                    continue
                self.registry.register_run(ref.run)
                provenance = Provenance(producer="recovered")
                if ref.id in made_by:
                    record = self.registry.get_quanta([made_by[ref.id]])[made_by[ref.id]]
                    provenance = Provenance(
                        producer=record.stage,
                        quantum_id=record.quantum_id,
                        input_ids=list(record.input_ids),
                        config_hash=record.config_hash,
                        software=record.software,
                    )
                self._pending.append(self._row(ref, len(data), checksum_of(data), provenance))
                recorded.append(ref)
        return recorded, left

    def _ref_from_path(self, relpath: str) -> DatasetRef | None:
        """The ref whose path is ``relpath``, if some registered dataset type, run and dataId
        give exactly that path; else None."""
        segments = relpath.split("/")
        types = {t.name: t for t in self.registry.dataset_types()}
        for i in range(1, len(segments) - 1):
            dataset_type = types.get(segments[i])
            pairs = [part.partition("=") for part in segments[i + 1 : -1]]
            if dataset_type is None or not all(sep for _, sep, _ in pairs):
                continue
            values: dict[str, Any] = {}
            for key, _, text in pairs:
                dim = UNIVERSE.get(key)
                if dim is None:
                    break
                values[key] = (
                    int(text) if dim.dtype == "int" and text.lstrip("-").isdigit() else text
                )
            else:
                try:
                    ref = self.make_ref(dataset_type, values, "/".join(segments[:i]))
                except DrpError:
                    continue
                if ref.path == relpath:
                    return ref
        return None

    def remove_run(self, run: str) -> int:
        """Remove a RUN collection and all its datasets; it must not be in a chain."""
        collection = self.registry.get_collection(run)
        if collection.type != "RUN":
            raise CollectionError(f"{run!r} is a CHAINED collection; remove runs, not chains")
        for other in self.registry.collections():
            if other.type == "CHAINED" and run in other.children:
                raise CollectionError(
                    f"run {run!r} is in chain {other.name!r}; redefine the chain first"
                )
        count = self.remove_datasets(self.query_datasets(collections=run, find_first=False))
        self.registry.remove_collection(run)
        return count

    def verify(self, *, checksums: bool = True) -> VerifyReport:
        """Check that every record has its file (size, checksum) and list unrecorded files."""
        report = VerifyReport()
        current = self.registry.current_datasets(refresh=True)
        recorded = set()
        for ref in self._refs_from_frame(current):
            report.checked += 1
            if "://" not in ref.path:
                recorded.add(ref.path)
            try:
                if checksums:
                    data = self._read_bytes(ref)
                    size = len(data)
                elif "://" in ref.path:
                    data, size = None, len(self._read_external(ref.path))
                else:
                    data, size = None, self.storage.size(ref.path)
            except StorageError:
                report.missing.append(self._uri(ref.path))
                report.missing_refs.append(ref)
                continue
            if size != ref.size:
                report.bad_size.append(self._uri(ref.path))
            elif data is not None and checksum_of(data) != ref.checksum:
                report.bad_checksum.append(self._uri(ref.path))
        for relpath, _size in self.storage.walk_files(""):
            if relpath.rpartition("/")[2].startswith(TEMP_PREFIX):
                report.temporary.append(self.storage.uri(relpath))
            elif relpath == REPO_CONFIG or relpath.startswith(REGISTRY_DIR + "/"):
                continue
            elif relpath not in recorded:
                report.orphans.append(self.storage.uri(relpath))
        return report

    def delete_orphans(self, report: VerifyReport, *, min_temp_age: float = 3600.0) -> int:
        """Delete the unrecorded files a verify report found, and its temporary files last
        modified more than ``min_temp_age`` seconds ago (younger ones may be writes in
        progress). Returns the number of files deleted."""
        prefix = self.storage.uri("x")[:-1]
        relpaths = [uri[len(prefix) :] for uri in report.orphans]
        now = time.time()
        for uri in report.temporary:
            relpath = uri[len(prefix) :]
            with contextlib.suppress(DrpError):
                if now - self.storage.modified(relpath) > min_temp_age:
                    relpaths.append(relpath)
        for relpath in relpaths:
            self.storage.delete(relpath)
        return len(relpaths)

    def compact(self) -> dict[str, tuple[int, int]]:
        """Merge the registry's small files; returns {table: (files merged, rows)}."""
        result = {
            "datasets": self.registry.datasets.compact(),
            "quanta": self.registry.quanta.compact(),
        }
        for element, table in self.registry.records.items():
            merged = table.compact()
            if merged[0]:
                result[element] = merged
        return result


def ensure_progress(
    iterable: Iterable[Any], *, total: int | None = None, desc: str = ""
) -> Iterable[Any]:
    """Wrap an iterable in a progress bar on a terminal; plain iteration otherwise."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="ds", leave=False)


def transfer(
    source: Repository, dest: Repository, refs: Sequence[DatasetRef], *, batch: int = 500
) -> int:
    """Copy datasets (files, records and provenance) into another repository.

    Dataset types, the dimension records they need and the runs are created in ``dest``; datasets
    already there (same id) are skipped. Returns the number copied.
    """
    for dataset_type in {ref.dataset_type for ref in refs}:
        dest.registry.register_dataset_type(dataset_type)
    for element in ELEMENTS:
        records = source.registry.dimension_records(element).to_dicts()
        if records:
            dest.registry.insert_dimension_records(element, records)
    present = set(dest.registry.current_datasets()["dataset_id"].to_list())
    source_rows = {
        row["dataset_id"]: row for row in source.registry.current_datasets().iter_rows(named=True)
    }
    copied = 0
    todo = [ref for ref in refs if ref.id not in present]
    rows: list[dict[str, Any]] = []
    for ref in ensure_progress(todo, total=len(todo), desc="transfer"):
        dest.registry.register_run(ref.run)
        data = source._read_bytes(ref)
        path = (
            ref.path
            if "://" not in ref.path
            else Repository.path_for(ref.dataset_type, ref.data_id, ref.run)
        )
        dest.storage.put_bytes(path, data)
        row = dict(source_rows[ref.id])
        row.update(path=path, timestamp=time.time_ns())
        rows.append(row)
        copied += 1
        if len(rows) >= batch:
            dest.registry.commit_datasets(rows)
            rows = []
    dest.registry.commit_datasets(rows)
    _transfer_quanta(source, dest, {row["quantum_id"] for row in rows if row["quantum_id"]})
    return copied


def _transfer_quanta(source: Repository, dest: Repository, quantum_ids: set[str]) -> None:
    """Copy the provenance records of the quanta that produced transferred datasets."""
    if not quantum_ids:
        return
    frame = source.registry.current_quanta().filter(pl.col("quantum_id").is_in(list(quantum_ids)))
    known = set(dest.registry.current_quanta()["quantum_id"].to_list())
    frame = frame.filter(~pl.col("quantum_id").is_in(list(known)))
    if frame.height:
        table = frame.to_arrow()
        name = dest.registry.quanta.append(table)
        dest.registry.quanta.note_committed(name)
        dest.registry.quanta.add_local(table)
