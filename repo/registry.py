"""The registry: the record of what exists, kept as files inside the repository.

There is no database server. Under ``registry/`` the repository holds

* ``dataset_types/<name>.json`` — one file per dataset type, created exclusively, never changed;
* ``collections/<name>.json`` — RUN and CHAINED collection definitions;
* ``dimensions/<element>/*.parquet`` — dimension records, as a :class:`~repo.logtable.LogTable`;
* ``datasets/*.parquet`` — dataset records (``put`` and ``remove`` rows), as a LogTable;
* ``quanta/*.parquet`` — one provenance record per executed quantum (stage, dataId, config,
  software, inputs, outputs, host, times, status), as a LogTable keyed by quantum id.

DuckDB reads the state (held as Arrow/polars frames in memory) for every query; nothing user-typed
is ever pasted into SQL: where-expressions are parsed by :mod:`repo.where` and values bound.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from .dimensions import (
    DIMENSION_NAMES,
    ELEMENTS,
    UNIVERSE,
    DataId,
    DimensionGroup,
    normalize_value,
    sort_dimensions,
    validate_data_id,
)
from .errors import (
    CollectionError,
    DatasetTypeError,
    DimensionRecordError,
    InvalidDataIdError,
)
from .logtable import LogTable
from .storage import Storage
from .storage_classes import get_storage_class

REGISTRY_DIR = "registry"
DATASET_ID_NAMESPACE = uuid.UUID("5d2a2b49-70a4-4d1b-9d1e-6b6e2f6b8a31")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_RUN_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,63}"
_COLLECTION_RE = re.compile(rf"^{_RUN_SEGMENT}(/{_RUN_SEGMENT}){{0,7}}$")
RESERVED_NAMES = {"registry", "datasets", "drp"}

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}

#: Columns of a dataset record, in order. Dimension columns are null where they do not apply.
DATASET_SCHEMA = pa.schema(
    [
        ("op", pa.string()),
        ("dataset_id", pa.string()),
        ("dataset_type", pa.string()),
        ("run", pa.string()),
        *[(name, _ARROW_TYPES[UNIVERSE[name].dtype]) for name in DIMENSION_NAMES],
        ("path", pa.string()),
        ("size", pa.int64()),
        ("checksum", pa.string()),
        ("timestamp", pa.int64()),
        ("producer", pa.string()),
        ("quantum_id", pa.string()),
        ("input_ids", pa.list_(pa.string())),
        ("config_hash", pa.string()),
        ("software", pa.string()),
    ]
)


def check_name(name: str, what: str) -> str:
    """Validate a dataset type name."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise DatasetTypeError(
            f"{what} {name!r:.80} is not valid: use a letter then letters, digits or '_' (<= 64)"
        )
    if name in UNIVERSE or name.lower() in RESERVED_NAMES:
        raise DatasetTypeError(f"{what} {name!r} is reserved (a dimension or registry name)")
    return name


def check_collection_name(name: str) -> str:
    """Validate a collection name: '/'-separated segments of safe characters."""
    if (
        not isinstance(name, str)
        or not _COLLECTION_RE.fullmatch(name)
        or name.split("/")[0].lower() in RESERVED_NAMES
    ):
        raise CollectionError(
            f"collection name {name!r:.100} is not valid: use up to 8 '/'-separated segments of "
            "letters, digits and '_.+-' (not starting with '.'; 'registry' is reserved)"
        )
    return name


def dataset_id_for(dataset_type: str, run: str, data_id: DataId, required: Sequence[str]) -> str:
    """The deterministic dataset id: a UUID5 of (dataset type, run, required dataId values)."""
    key = f"{dataset_type}/{run}/{data_id.subset(required).canonical()}"
    return str(uuid.uuid5(DATASET_ID_NAMESPACE, key))


@dataclass(frozen=True)
class DatasetType:
    """A named kind of dataset: its dimensions and storage class."""

    name: str
    dimensions: tuple[str, ...]
    storage_class: str

    def __post_init__(self) -> None:
        check_name(self.name, "dataset type name")
        object.__setattr__(self, "dimensions", sort_dimensions(self.dimensions))
        get_storage_class(self.storage_class)

    @cached_property
    def group(self) -> DimensionGroup:
        """Required and implied dimensions of this dataset type."""
        return DimensionGroup.from_names(self.dimensions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimensions": list(self.dimensions),
            "storage_class": self.storage_class,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetType:
        return cls(data["name"], tuple(data["dimensions"]), data["storage_class"])

    def __str__(self) -> str:
        dims = ", ".join(self.dimensions) or "no dimensions"
        return f"{self.name}({dims}) [{self.storage_class}]"


@dataclass(frozen=True)
class DatasetRef:
    """A dataset in the registry: type, run, full dataId (with implied keys), id and file."""

    dataset_type: DatasetType
    data_id: DataId
    run: str
    id: str
    path: str | None = None
    size: int | None = None
    checksum: str | None = None

    def __str__(self) -> str:
        return f"{self.dataset_type.name}@{self.data_id} in {self.run}"


@dataclass
class Provenance:
    """Where a dataset came from: the producing stage and quantum, inputs, config and software."""

    producer: str = "put"
    quantum_id: str | None = None
    input_ids: list[str] = field(default_factory=list)
    config_hash: str | None = None
    software: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Collection:
    """A RUN (owns datasets) or a CHAINED collection (an ordered search path)."""

    name: str
    type: str
    children: tuple[str, ...] = ()
    doc: str = ""


#: Columns of a quantum provenance record (see :class:`QuantumRecord`).
QUANTUM_SCHEMA = pa.schema(
    [
        ("quantum_id", pa.string()),
        ("stage", pa.string()),
        ("stage_class", pa.string()),
        ("run", pa.string()),
        ("data_id", pa.string()),
        ("config", pa.string()),
        ("config_hash", pa.string()),
        ("software", pa.string()),
        ("input_ids", pa.list_(pa.string())),
        ("output_ids", pa.list_(pa.string())),
        ("host", pa.string()),
        ("pid", pa.int64()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("timestamp", pa.int64()),
    ]
)

#: Values of :attr:`QuantumRecord.status`.
QUANTUM_STATUSES = ("done", "failed")


@dataclass
class QuantumRecord:
    """Provenance of one executed quantum: one unit of work of a pipeline stage.

    Attributes
    ----------
    quantum_id : str
        Deterministic id of the quantum (stage label, output run and dataId); a re-run of the same
        quantum replaces its record.
    stage, stage_class : str
        Pipeline label of the stage and the import path of its class.
    run : str
        The output RUN collection.
    data_id : dict
        The quantum's dataId.
    config : str
        Canonical JSON of the stage configuration; ``config_hash`` is its sha256.
    software : dict
        Versions of drp and the libraries it uses.
    input_ids, output_ids : list of str
        Dataset ids read and written.
    host, pid : str, int
        Where it ran.
    start, end : float
        POSIX times (s) of the start and end of the quantum.
    status : str
        ``done`` or ``failed``; ``error`` holds the error of a failed quantum.
    """

    quantum_id: str
    stage: str
    stage_class: str
    run: str
    data_id: dict[str, Any]
    config: str
    config_hash: str
    software: dict[str, str]
    input_ids: list[str]
    output_ids: list[str]
    host: str
    pid: int
    start: float
    end: float
    status: str = "done"
    error: str = ""

    def to_row(self) -> dict[str, Any]:
        """The record as a row of :data:`QUANTUM_SCHEMA`."""
        if self.status not in QUANTUM_STATUSES:
            raise ValueError(f"quantum status must be one of {QUANTUM_STATUSES}: {self.status!r}")
        row = {name: getattr(self, name) for name in QUANTUM_SCHEMA.names if name != "timestamp"}
        row["data_id"] = json.dumps(dict(self.data_id), sort_keys=True)
        row["software"] = json.dumps(dict(self.software), sort_keys=True)
        row["input_ids"] = list(self.input_ids)
        row["output_ids"] = list(self.output_ids)
        row["timestamp"] = time.time_ns()
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QuantumRecord:
        """A record from a row of the quanta table."""
        values = {name: row[name] for name in QUANTUM_SCHEMA.names if name != "timestamp"}
        values["data_id"] = json.loads(row["data_id"] or "{}")
        values["software"] = json.loads(row["software"] or "{}")
        values["input_ids"] = list(row["input_ids"] or [])
        values["output_ids"] = list(row["output_ids"] or [])
        values["error"] = row["error"] or ""
        return cls(**values)


def _record_schema(element: str) -> pa.Schema:
    dim = ELEMENTS[element]
    columns = [(c, _ARROW_TYPES[dim.record_dtype(c)]) for c in dim.record_columns]
    return pa.schema([*columns, ("timestamp", pa.int64())])


class Registry:
    """What exists in a repository: dataset types, collections, dimension records, datasets."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.datasets = LogTable(
            storage, f"{REGISTRY_DIR}/datasets", DATASET_SCHEMA, ["dataset_id"]
        )
        self.records = {
            name: LogTable(
                storage,
                f"{REGISTRY_DIR}/dimensions/{name}",
                _record_schema(name),
                ELEMENTS[name].record_keys,
            )
            for name in ELEMENTS
        }
        self.quanta = LogTable(storage, f"{REGISTRY_DIR}/quanta", QUANTUM_SCHEMA, ["quantum_id"])
        self._dataset_types: dict[str, DatasetType] = {}
        self._collections: dict[str, Collection] = {}
        self._record_index: dict[str, tuple[int, dict[tuple, dict[str, Any]]]] = {}
        self._current: tuple[int, pl.DataFrame] | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._con_versions: dict[str, int] = {}

    # -- dataset types ---------------------------------------------------------------------------

    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        """Register a dataset type; returns False if the identical one exists already.

        Registering a name that exists with another definition raises DatasetTypeError.
        """
        relpath = f"{REGISTRY_DIR}/dataset_types/{dataset_type.name}.json"
        data = json.dumps(dataset_type.to_dict(), indent=1).encode()
        try:
            self.storage.put_bytes(relpath, data, exclusive=True)
        except FileExistsError:
            existing = self.get_dataset_type(dataset_type.name)
            if existing != dataset_type:
                raise DatasetTypeError(
                    f"dataset type {dataset_type.name!r} is already registered as {existing}; "
                    f"cannot redefine it as {dataset_type}"
                ) from None
            return False
        self._dataset_types[dataset_type.name] = dataset_type
        return True

    def get_dataset_type(self, name: str) -> DatasetType:
        """Look up a dataset type by name."""
        cached = self._dataset_types.get(name)
        if cached is not None:
            return cached
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise DatasetTypeError(f"unknown dataset type {name!r:.80}")
        relpath = f"{REGISTRY_DIR}/dataset_types/{name}.json"
        if not self.storage.exists(relpath):
            known = ", ".join(t.name for t in self.dataset_types()) or "none registered"
            raise DatasetTypeError(f"unknown dataset type {name!r} (known: {known})")
        dataset_type = DatasetType.from_dict(json.loads(self.storage.get_bytes(relpath)))
        self._dataset_types[name] = dataset_type
        return dataset_type

    def dataset_types(self) -> list[DatasetType]:
        """All registered dataset types, sorted by name."""
        names = self.storage.list_names(f"{REGISTRY_DIR}/dataset_types")
        return [self.get_dataset_type(n[:-5]) for n in sorted(names) if n.endswith(".json")]

    # -- collections -----------------------------------------------------------------------------

    def _collection_path(self, name: str) -> str:
        return f"{REGISTRY_DIR}/collections/{urllib.parse.quote(name, safe='')}.json"

    def register_run(self, name: str, doc: str = "") -> bool:
        """Create a RUN collection if it does not exist; returns True if it was created."""
        check_collection_name(name)
        cached = self._collections.get(name)
        if cached is not None and cached.type == "RUN":
            return False
        data = json.dumps({"name": name, "type": "RUN", "children": [], "doc": doc}).encode()
        try:
            self.storage.put_bytes(self._collection_path(name), data, exclusive=True)
        except FileExistsError:
            existing = self.get_collection(name)
            if existing.type != "RUN":
                raise CollectionError(
                    f"{name!r} is a {existing.type} collection, not a RUN; datasets can only be "
                    "put into RUN collections"
                ) from None
            return False
        self._collections[name] = Collection(name, "RUN", (), doc)
        return True

    def define_chain(self, name: str, children: Sequence[str], doc: str = "") -> Collection:
        """Create or redefine a CHAINED collection searching ``children`` in order."""
        check_collection_name(name)
        if not children:
            raise CollectionError(f"chain {name!r} needs at least one child collection")
        try:
            existing = self.get_collection(name)
        except CollectionError:
            existing = None
        if existing is not None and existing.type == "RUN":
            raise CollectionError(f"{name!r} is a RUN collection; cannot make it a chain")
        for child in children:
            self.get_collection(child)  # must exist
        chain = Collection(name, "CHAINED", tuple(children), doc)
        self._collections[name] = chain
        if name in self.flatten([name], _checking=True):
            raise CollectionError(f"chain {name!r} would contain itself")
        data = json.dumps(
            {"name": name, "type": "CHAINED", "children": list(children), "doc": doc}
        ).encode()
        self.storage.put_bytes(self._collection_path(name), data)
        return chain

    def get_collection(self, name: str) -> Collection:
        """Look up a collection definition (re-read for chains, which may be redefined)."""
        check_collection_name(name)
        cached = self._collections.get(name)
        if cached is not None and cached.type == "RUN":
            return cached
        relpath = self._collection_path(name)
        if not self.storage.exists(relpath):
            self._collections.pop(name, None)
            raise CollectionError(f"unknown collection {name!r}")
        data = json.loads(self.storage.get_bytes(relpath))
        coll = Collection(
            data["name"], data["type"], tuple(data.get("children", ())), data.get("doc", "")
        )
        self._collections[name] = coll
        return coll

    def collections(self) -> list[Collection]:
        """All collections, sorted by name."""
        names = self.storage.list_names(f"{REGISTRY_DIR}/collections")
        out = []
        for fname in sorted(names):
            if fname.endswith(".json"):
                out.append(self.get_collection(urllib.parse.unquote(fname[:-5])))
        return out

    def remove_collection(self, name: str) -> None:
        """Forget a collection definition (its datasets must be removed first)."""
        self.storage.delete(self._collection_path(name))
        self._collections.pop(name, None)

    def flatten(self, collections: Iterable[str], *, _checking: bool = False) -> list[str]:
        """Expand chains into the ordered list of RUN collections they search."""
        runs: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                if _checking:
                    runs.append(name)
                    return
                raise CollectionError(f"collection chain cycle: {' -> '.join((*path, name))}")
            coll = (
                self._collections[name]
                if _checking and name in self._collections
                else self.get_collection(name)
            )
            if coll.type == "RUN":
                if name not in runs:
                    runs.append(name)
            else:
                for child in coll.children:
                    visit(child, (*path, name))

        for name in collections:
            visit(name, ())
        return runs

    # -- dimension records -----------------------------------------------------------------------

    def insert_dimension_records(
        self, element: str, records: Iterable[Mapping[str, Any]], *, update: bool = False
    ) -> int:
        """Store dimension records; returns how many were new or changed.

        A record identical to the stored one is skipped; a different one is an error unless
        ``update`` is true.
        """
        if element not in ELEMENTS:
            raise DimensionRecordError(f"unknown dimension element {element!r}")
        dim = ELEMENTS[element]
        table = self.records[element]
        existing = self._index(element)
        rows = []
        for record in records:
            row = self._normalize_record(element, record)
            key = tuple(row[c] for c in table.keys)
            old = existing.get(key)
            if old is not None:
                if all(_same(old.get(c), row[c]) for c in dim.record_columns):
                    continue
                if not update:
                    diff = {
                        c: (old.get(c), row[c])
                        for c in dim.record_columns
                        if not _same(old.get(c), row[c])
                    }
                    raise DimensionRecordError(
                        f"{element} record {dict(zip(table.keys, key, strict=True))} conflicts "
                        f"with the stored one: {diff} (stored, new)"
                    )
            rows.append(row)
        if not rows:
            return 0
        now = time.time_ns()
        for row in rows:
            row["timestamp"] = now
        arrow = pa.Table.from_pylist(rows, schema=table.schema)
        name = table.append(arrow)
        table.note_committed(name)
        table.add_local(arrow)
        return len(rows)

    def _normalize_record(self, element: str, record: Mapping[str, Any]) -> dict[str, Any]:
        dim = ELEMENTS[element]
        unknown = set(record) - set(dim.record_columns)
        if unknown:
            raise DimensionRecordError(
                f"{element} record has unknown field(s) {sorted(unknown)}; "
                f"fields: {', '.join(dim.record_columns)}"
            )
        row: dict[str, Any] = {}
        for column in dim.record_columns:
            value = record.get(column)
            dtype = dim.record_dtype(column)
            is_dimension = (
                column == dim.key_field or column in dim.requires or column in dim.implies
            )
            if is_dimension:
                if value is None:
                    raise DimensionRecordError(f"{element} record {dict(record)} lacks {column!r}")
                try:
                    name = element if column == dim.key_field else column
                    value = normalize_value(name, value)
                except InvalidDataIdError as exc:
                    raise DimensionRecordError(f"{element} record: {exc}") from None
            elif value is not None:
                try:
                    value = {"int": int, "float": float, "str": str}[dtype](value)
                except (TypeError, ValueError):
                    raise DimensionRecordError(
                        f"{element} record field {column!r}: expected {dtype}, got {value!r:.80}"
                    ) from None
            row[column] = value
        return row

    def dimension_records(self, element: str, *, refresh: bool = True) -> pl.DataFrame:
        """All records of one element as a frame (without the internal timestamp column)."""
        if element not in ELEMENTS:
            raise DimensionRecordError(
                f"unknown dimension element {element!r}; known: {', '.join(ELEMENTS)}"
            )
        table = self.records[element]
        state = table.refresh() if refresh else table.state
        return state.drop("timestamp")

    def _index(self, element: str, *, refresh: bool = True) -> dict[tuple, dict[str, Any]]:
        table = self.records[element]
        if refresh:
            table.refresh()
        cached = self._record_index.get(element)
        if cached is not None and cached[0] == table.version:
            return cached[1]
        index = {tuple(row[c] for c in table.keys): row for row in table.state.to_dicts()}
        self._record_index[element] = (table.version, index)
        return index

    def get_record(self, element: str, data_id: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record of ``element`` for a dataId, or None (refreshing once on a miss)."""
        table = self.records[element]
        dim = ELEMENTS[element]
        key = tuple(data_id[element] if c == dim.key_field else data_id[c] for c in table.keys)
        record = self._index(element, refresh=False).get(key)
        if record is None:
            record = self._index(element, refresh=True).get(key)
        return record

    def expand_data_id(
        self, data_id: Mapping[str, Any], group: DimensionGroup, *, what: str = "dataId"
    ) -> DataId:
        """Validate a dataId and fill its implied values from the dimension records.

        Every required dimension must have a record; implied values given by the caller must
        agree with the records.
        """
        values = dict(validate_data_id(data_id, group, what=what))
        for name in group.required:
            record = self.get_record(name, values)
            if record is None:
                keys = {k: values[k] for k in (*UNIVERSE[name].requires, name)}
                raise InvalidDataIdError(
                    f"{what} {dict(data_id)}: no {name} record for {keys} in this repository "
                    "(register the instrument, ingest or define it first)"
                )
            for implied in UNIVERSE[name].implies:
                value = record.get(implied)
                given = values.get(implied)
                if given is not None and given != value:
                    raise InvalidDataIdError(
                        f"{what} {dict(data_id)}: {implied}={given!r} contradicts the {name} "
                        f"record, which says {implied}={value!r}"
                    )
                values[implied] = value
        return DataId(values)

    # -- datasets --------------------------------------------------------------------------------

    def current_datasets(self, *, refresh: bool = True) -> pl.DataFrame:
        """The datasets that exist now (latest row per id, removed ones dropped)."""
        if refresh:
            self.datasets.refresh()
        version = self.datasets.version
        if self._current is None or self._current[0] != version:
            state = self.datasets.state
            self._current = (version, state.filter(pl.col("op") == "put"))
        return self._current[1]

    def commit_datasets(self, rows: list[dict[str, Any]]) -> None:
        """Record dataset rows (puts or removals) as one atomic commit."""
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=DATASET_SCHEMA)
        name = self.datasets.append(table)
        self.datasets.note_committed(name)
        self.datasets.add_local(table)

    def connection(
        self, tables: Iterable[str] | None = None, *, fresh: bool = False
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with ``datasets`` and one view per dimension element.

        By default this is the registry's own connection, kept open between queries: only the
        ``tables`` asked for (all by default) are brought up to date, each re-registered only if
        it changed. Do not close it. ``fresh=True`` gives a new connection the caller owns and
        may extend (``drp sql`` adds catalog views to it).
        """
        names = [*ELEMENTS, "datasets"] if tables is None else list(tables)
        if fresh or self._con is None:
            con = duckdb.connect(
                config={
                    "autoinstall_known_extensions": "false",
                    "autoload_known_extensions": "false",
                }
            )
            for element, dim in ELEMENTS.items():
                con.register(f"_rec_{element}", self.records[element].state.drop("timestamp"))
                # A view whose key column carries the dimension's name, for natural joins.
                alias = f'"{dim.key_field}" AS "{element}", ' if dim.key_field else ""
                con.execute(f'CREATE VIEW "{element}" AS SELECT {alias}* FROM "_rec_{element}"')
            con.register("datasets", self.current_datasets(refresh=False))
            if fresh:
                self._refresh_tables(con, [*ELEMENTS, "datasets"], {})
                return con
            self._con, self._con_versions = con, {}
        self._refresh_tables(self._con, names, self._con_versions)
        return self._con

    def _refresh_tables(
        self, con: duckdb.DuckDBPyConnection, names: list[str], versions: dict[str, int]
    ) -> None:
        for name in names:
            if name == "datasets":
                frame = self.current_datasets(refresh=True)
                version = self.datasets.version
                target = "datasets"
            else:
                frame = self.dimension_records(name, refresh=True)
                version = self.records[name].version
                target = f"_rec_{name}"
            if versions.get(name) != version:
                con.register(target, frame.to_arrow())  # Arrow: scanned without conversion
                versions[name] = version

    # -- quanta (provenance of pipeline runs) ----------------------------------------------------

    def commit_quanta(self, records: Sequence[QuantumRecord]) -> None:
        """Record quantum provenance records as one atomic commit (a later one replaces an
        earlier record of the same quantum id)."""
        if not records:
            return
        table = pa.Table.from_pylist([r.to_row() for r in records], schema=QUANTUM_SCHEMA)
        name = self.quanta.append(table)
        self.quanta.note_committed(name)
        self.quanta.add_local(table)

    def current_quanta(self, *, refresh: bool = True) -> pl.DataFrame:
        """The latest record of every quantum, as a frame of :data:`QUANTUM_SCHEMA` columns."""
        return self.quanta.refresh() if refresh else self.quanta.state

    def get_quanta(self, quantum_ids: Iterable[str]) -> dict[str, QuantumRecord]:
        """The records of the given quantum ids that exist, keyed by id."""
        ids = list(dict.fromkeys(quantum_ids))
        if not ids:
            return {}
        frame = self.current_quanta().filter(pl.col("quantum_id").is_in(ids))
        return {row["quantum_id"]: QuantumRecord.from_row(row) for row in frame.to_dicts()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # both NaN
    return a == b
