"""Running one quantum: load its inputs, call the stage, write its outputs, record provenance.

A quantum travels to a worker (a process of the local pool, or a Dask worker on another machine)
as a small picklable :class:`QuantumSpec`: the stage's import path and canonical config JSON, the
quantum dataId, and the refs of its inputs and predicted outputs (ids and paths included, so the
worker needs no registry query). Each worker process opens the repository once from its URL and
storage options (:func:`worker_repository`) and keeps it.

:func:`run_quantum` writes all outputs of a quantum inside one repository transaction, so they are
committed together as one registry file or not at all, and their dataset records carry the
quantum id, input ids, config hash and software versions. The quantum's own record (stage, dataId,
config, software, inputs, outputs, host, pid, start, end, status) goes to the registry's quanta
table just before the outputs are committed: after a crash between the two, the outputs are absent,
the quantum is run again and its record replaced (same quantum id), so nothing is duplicated. A
failing stage leaves no outputs and a ``failed`` record with the error.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from repo.dimensions import DataId
from repo.errors import DrpError
from repo.registry import DatasetRef, Provenance, QuantumRecord
from repo.repository import Repository, software_versions
from repo.skymap import RingsSkyMap, SkyMapConfig
from repo.storage_classes import get_storage_class

from .base import Stage, import_stage
from .config import config_from_dict
from .graph import dataset_types_to_register, used_tracts
from .quanta import Quantum, QuantumGraph
from .skymap_setup import ensure_tract_records


class StageOutputError(DrpError, TypeError):
    """A stage's run() returned something other than its declared outputs."""


@dataclass(frozen=True)
class QuantumSpec:
    """Everything a worker needs to run one quantum (small and picklable).

    Attributes
    ----------
    id, label : str
        Quantum id and stage label.
    stage_class : str
        ``module.Class`` of the stage.
    config, config_hash : str
        Canonical JSON of the stage config and its sha256.
    data_id : DataId
        The quantum dataId.
    inputs : dict
        Connection name -> input refs; ``multiple`` names those delivered as a dict.
    outputs : dict
        Connection name -> output ref.
    skymap_config : str or None
        JSON config of the sky map, for stages whose ``run`` takes ``skymap``.
    """

    id: str
    label: str
    stage_class: str
    config: str
    config_hash: str
    data_id: DataId
    inputs: dict[str, tuple[DatasetRef, ...]]
    multiple: frozenset[str]
    outputs: dict[str, DatasetRef]
    skymap_config: str | None = None


@dataclass
class QuantumResult:
    """What became of a quantum: ``done`` or ``failed`` (with the error), when and where."""

    id: str
    status: str
    start: float
    end: float
    host: str = ""
    pid: int = 0
    error: str = ""
    details: str = ""
    output_ids: list[str] = field(default_factory=list)


def make_spec(graph: QuantumGraph, quantum: Quantum) -> QuantumSpec:
    """The spec of one quantum of a graph."""
    stage = graph.pipeline.stage(quantum.label)
    cls = stage.stage_class
    return QuantumSpec(
        id=quantum.id,
        label=quantum.label,
        stage_class=cls.import_path(),
        config=stage.config_json,
        config_hash=stage.config_hash,
        data_id=quantum.data_id,
        inputs={name: tuple(map(_with_path, refs)) for name, refs in quantum.inputs.items()},
        multiple=frozenset(n for n, c in cls.inputs.items() if c.multiple),
        outputs={name: _with_path(ref) for name, ref in quantum.outputs.items()},
        skymap_config=graph.skymap.config.to_json() if graph.skymap is not None else None,
    )


def _with_path(ref: DatasetRef) -> DatasetRef:
    """A predicted ref with its path, which follows from (dataset type, run, dataId) alone."""
    if ref.path is not None:
        return ref
    return dataclasses.replace(
        ref, path=Repository.path_for(ref.dataset_type, ref.data_id, ref.run)
    )


def prepare_run(repo: Repository, graph: QuantumGraph) -> None:
    """Register the output run, the output dataset types and the tract/patch records used."""
    repo.registry.register_run(graph.output_run)
    for dataset_type in dataset_types_to_register(graph):
        repo.registry.register_dataset_type(dataset_type)
    tracts = used_tracts(graph)
    if tracts and graph.skymap is not None:
        ensure_tract_records(repo, graph.skymap, tracts)


# -- per-process caches ---------------------------------------------------------------------------

#: A worker reopens its repository after this many quanta: a Repository keeps the registry rows
#: of its own commits in memory, which a worker never reads, so that stays small.
REOPEN_EVERY = 200

_REPOSITORIES: dict[tuple[str, str], tuple[Repository, list[int]]] = {}
_STAGES: dict[tuple[str, str], Stage] = {}
_SKYMAPS: dict[str, RingsSkyMap] = {}


def worker_repository(url: str, storage_options: Mapping[str, Any] | None = None) -> Repository:
    """The repository at ``url``, opened once per process (and again every REOPEN_EVERY uses)."""
    key = (url, json.dumps(dict(storage_options or {}), sort_keys=True, default=str))
    entry = _REPOSITORIES.get(key)
    if entry is None or entry[1][0] >= REOPEN_EVERY:
        entry = _REPOSITORIES[key] = (Repository(url, storage_options), [0])
    entry[1][0] += 1
    return entry[0]


def _stage(spec: QuantumSpec) -> Stage:
    key = (spec.stage_class, spec.config_hash)
    stage = _STAGES.get(key)
    if stage is None:
        cls = import_stage(spec.stage_class)
        config = config_from_dict(cls.config_class, json.loads(spec.config))
        stage = _STAGES[key] = cls(config)
    return stage


def _skymap(config_json: str) -> RingsSkyMap:
    skymap = _SKYMAPS.get(config_json)
    if skymap is None:
        skymap = _SKYMAPS[config_json] = RingsSkyMap(SkyMapConfig.from_json(config_json))
    return skymap


# -- running --------------------------------------------------------------------------------------


def execute_quantum(
    spec: QuantumSpec, repo_url: str, storage_options: Mapping[str, Any] | None = None
) -> QuantumResult:
    """Run one quantum in this process against the repository at ``repo_url``.

    This is the function the executors send to their workers; it never raises for a failure of
    the stage (the result says ``failed``).
    """
    return run_quantum(worker_repository(repo_url, storage_options), spec)


def run_quantum(repo: Repository, spec: QuantumSpec) -> QuantumResult:
    """Run one quantum: load inputs, call the stage, commit outputs and its record together."""
    start = time.time()
    host, pid = socket.gethostname(), os.getpid()
    input_ids = [ref.id for refs in spec.inputs.values() for ref in refs]
    output_ids = [ref.id for ref in spec.outputs.values()]
    try:
        stage = _stage(spec)
        arguments = _load_inputs(repo, spec)
        arguments.update(_context_arguments(stage, spec))
        produced = stage.run(**arguments)
        payload = _serialize_outputs(spec, produced)
        provenance = Provenance(
            producer=spec.label,
            quantum_id=spec.id,
            input_ids=input_ids,
            config_hash=spec.config_hash,
            software=software_versions(),
        )
        with repo.transaction():
            for name, ref in spec.outputs.items():
                repo.store_bytes(ref, payload[name], mode="overwrite", provenance=provenance)
            end = time.time()
            record = _record(spec, input_ids, output_ids, host, pid, start, end, "done", "")
            repo.registry.commit_quanta([record])
        return QuantumResult(spec.id, "done", start, end, host, pid, output_ids=output_ids)
    except Exception as exc:
        end = time.time()
        error = f"{type(exc).__name__}: {exc}"
        details = traceback.format_exc()
        record = _record(spec, input_ids, [], host, pid, start, end, "failed", details)
        try:
            repo.registry.commit_quanta([record])
        except Exception as record_exc:  # the storage itself may be what failed
            details += f"\n(the failure could not be recorded: {record_exc})"
        return QuantumResult(spec.id, "failed", start, end, host, pid, error, details)


def _load_inputs(repo: Repository, spec: QuantumSpec) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for name, refs in spec.inputs.items():
        if name in spec.multiple:
            arguments[name] = {ref.data_id: repo.read(ref) for ref in refs}
        else:
            arguments[name] = repo.read(refs[0])
    return arguments


def _context_arguments(stage: Stage, spec: QuantumSpec) -> dict[str, Any]:
    """The ``data_id`` and ``skymap`` keywords, for a ``run`` that names them."""
    params = inspect.signature(type(stage).run).parameters
    extra: dict[str, Any] = {}
    if "data_id" in params:
        extra["data_id"] = spec.data_id
    if "skymap" in params and spec.skymap_config is not None:
        extra["skymap"] = _skymap(spec.skymap_config)
    return extra


def _serialize_outputs(spec: QuantumSpec, produced: Any) -> dict[str, bytes]:
    where = f"stage {spec.label!r} ({spec.stage_class}) for {dict(spec.data_id)}"
    if not isinstance(produced, Mapping):
        raise StageOutputError(
            f"{where}: run() returned {type(produced).__name__}, not a dict of outputs"
        )
    missing = sorted(set(spec.outputs) - set(produced))
    extra = sorted(set(produced) - set(spec.outputs))
    if missing or extra:
        raise StageOutputError(
            f"{where}: run() must return exactly {sorted(spec.outputs)}; "
            f"missing {missing}, unexpected {extra}"
        )
    return {
        name: get_storage_class(ref.dataset_type.storage_class).write(produced[name])
        for name, ref in spec.outputs.items()
    }


def _record(
    spec: QuantumSpec,
    input_ids: list[str],
    output_ids: list[str],
    host: str,
    pid: int,
    start: float,
    end: float,
    status: str,
    error: str,
) -> QuantumRecord:
    return QuantumRecord(
        quantum_id=spec.id,
        stage=spec.label,
        stage_class=spec.stage_class,
        run=next(iter(spec.outputs.values())).run,
        data_id=dict(spec.data_id),
        config=spec.config,
        config_hash=spec.config_hash,
        software=software_versions(),
        input_ids=input_ids,
        output_ids=output_ids,
        host=host,
        pid=pid,
        start=start,
        end=end,
        status=status,
        error=error,
    )
