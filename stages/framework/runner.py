"""Running quanta: load their inputs, call the stages, write their outputs, record provenance.

Quanta travel to a worker (a process of the local pool, or a Dask worker on another machine) in
jobs: lists of small picklable :class:`QuantumSpec` objects, each holding the stage's import
path and canonical config JSON, the quantum dataId, and the refs of its inputs and predicted
outputs (ids and paths included, so the worker needs no registry query). Each worker process
opens the repository once from its URL and storage options (:func:`worker_repository`) and keeps
it.

:func:`run_job` runs the quanta of a job in order (a job is a single quantum, or a chain such as
isr -> characterize -> calibrate of one detector, see
:meth:`stages.framework.quanta.QuantumGraph.jobs`). An output the graph marked transient is
handed in memory to the quanta of the job that read it and never written; every other output
is serialized as soon as its stage returns (a later stage may change the object it is given),
and a reader later in the job gets it from those bytes, exactly as from the repository. When
the job ends, every quantum that succeeded is committed in one repository transaction: its
written outputs, whose dataset records carry the quantum id, input ids, config hash and software
versions, and its quantum record (stage, dataId, config, software, inputs, outputs, host, pid,
start, end, status) in the registry's quanta table. The quantum records go in just before the
dataset records: a job killed between the two leaves records of quanta whose outputs are
absent, so those quanta run again and their records are replaced (same ids); a job killed
earlier leaves nothing but files without records, which the re-run overwrites. Nothing is ever
duplicated. A failing stage leaves no outputs and a ``failed`` record with the error; the
quanta of the job that need its outputs are not run (the driver marks them, and everything
downstream of the failure, ``blocked``); the others are.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import os
import socket
import time
import traceback
from collections import Counter, OrderedDict
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

log = logging.getLogger(__name__)


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
    transient : frozenset of str
        Outputs handed in memory to later quanta of the job, not written.
    shared : frozenset of str
        Ids of the inputs that other quanta of the run read too (kept decoded by the worker).
    run_token : str
        The run (graph) the quantum belongs to; a worker forgets shared inputs of other runs.
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
    transient: frozenset[str] = frozenset()
    shared: frozenset[str] = frozenset()
    run_token: str = ""


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
        skymap_config=graph.skymap_json,
        transient=quantum.transient,
        shared=graph.shared_inputs.intersection(
            ref.id for refs in quantum.inputs.values() for ref in refs
        ),
        run_token=graph.token,
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

#: A worker reopens its repository after this many jobs: a Repository keeps the registry rows of
#: its own commits in memory, which a worker never reads, so that stays small.
REOPEN_EVERY = 200

#: Decoded inputs read by several quanta of a run (bias, dark, flat, camera, refcat) that a worker
#: keeps, most recently used last; each reader gets a deep copy (stages may change what they are
#: given). A master calibration decoded once instead of once per ISR quantum: 0.05 s saved each.
SHARED_INPUTS_KEPT = 48

_REPOSITORIES: dict[tuple[str, str], tuple[Repository, list[int]]] = {}
_SHARED_INPUTS: OrderedDict[str, Any] = OrderedDict()
_SHARED_RUN: list[str] = [""]
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


def execute_job(
    specs: list[QuantumSpec], repo_url: str, storage_options: Mapping[str, Any] | None = None
) -> list[QuantumResult]:
    """Run a job in this process against the repository at ``repo_url``.

    This is the function the executors send to their workers; it never raises for a failure of
    a stage (its result says ``failed``).
    """
    return run_job(worker_repository(repo_url, storage_options), specs)


def run_quantum(repo: Repository, spec: QuantumSpec) -> QuantumResult:
    """Run one quantum on its own (a job of one); see :func:`run_job`."""
    return run_job(repo, [spec])[0]


@dataclass
class _Finished:
    """A quantum of a job that succeeded, waiting for the job's commit."""

    spec: QuantumSpec
    payload: dict[str, bytes]
    record: QuantumRecord


class _Handover:
    """The outputs of a job's quanta that later quanta of the job read.

    A transient output is kept as the object itself and given to its last reader (earlier ones
    get a deep copy: stages may change the objects they are given); a written output is kept
    as its bytes and read back for each reader, as from the repository.
    """

    def __init__(self, specs: list[QuantumSpec]):
        self.readers = Counter(r.id for s in specs for refs in s.inputs.values() for r in refs)
        self.objects: dict[str, Any] = {}
        self.serialized: dict[str, tuple[DatasetRef, bytes]] = {}

    def keep(self, spec: QuantumSpec, produced: Mapping[str, Any], payload: dict[str, bytes]):
        for name, ref in spec.outputs.items():
            if not self.readers[ref.id]:
                continue
            if name in payload:
                self.serialized[ref.id] = (ref, payload[name])
            else:
                self.objects[ref.id] = produced[name]

    def release(self, spec: QuantumSpec) -> None:
        """Forget the reads of a quantum that will not run (failed, or lacking an input)."""
        for refs in spec.inputs.values():
            for ref in refs:
                if self.readers[ref.id] > 0:
                    self.readers[ref.id] -= 1
                    if not self.readers[ref.id]:
                        self.objects.pop(ref.id, None)
                        self.serialized.pop(ref.id, None)

    def has(self, ref: DatasetRef) -> bool:
        return ref.id in self.objects or ref.id in self.serialized

    def get(self, ref: DatasetRef) -> Any:
        self.readers[ref.id] -= 1
        if ref.id in self.serialized:
            made, data = (
                self.serialized[ref.id] if self.readers[ref.id] else self.serialized.pop(ref.id)
            )
            source = f"{made.dataset_type.name} {dict(made.data_id)} made in this job"
            return get_storage_class(made.dataset_type.storage_class).read(data, source)
        if self.readers[ref.id] > 0:
            return copy.deepcopy(self.objects[ref.id])
        return self.objects.pop(ref.id)


def run_job(repo: Repository, specs: list[QuantumSpec]) -> list[QuantumResult]:
    """Run the quanta of a job in order and commit the ones that succeeded together.

    Returns a result for every quantum that ran (``done`` or ``failed``); quanta that needed
    the outputs of a failed one are left out (the caller marks them blocked).
    """
    host, pid = socket.gethostname(), os.getpid()
    handover = _Handover(specs)
    finished: list[_Finished] = []
    results: list[QuantumResult] = []
    failed_records: list[QuantumRecord] = []
    lost: set[str] = set()  # output ids a failed quantum did not make
    for spec in specs:
        input_ids = [ref.id for refs in spec.inputs.values() for ref in refs]
        output_ids = [ref.id for ref in spec.outputs.values()]
        if lost.intersection(input_ids):
            lost.update(output_ids)
            handover.release(spec)
            continue
        start = time.time()
        try:
            stage = _stage(spec)
            arguments = _load_inputs(repo, spec, handover)
            arguments.update(_context_arguments(stage, spec))
            produced = stage.run(**arguments)
            payload = _serialize_outputs(spec, produced)
            handover.keep(spec, produced, payload)
            del produced, arguments
        except Exception as exc:
            end = time.time()
            error = f"{type(exc).__name__}: {exc}"
            details = traceback.format_exc()
            failed_records.append(
                _record(spec, input_ids, [], host, pid, start, end, "failed", details)
            )
            results.append(QuantumResult(spec.id, "failed", start, end, host, pid, error, details))
            lost.update(output_ids)
            handover.release(spec)
            continue
        end = time.time()
        record = _record(spec, input_ids, output_ids, host, pid, start, end, "done", "")
        finished.append(_Finished(spec, payload, record))
        results.append(QuantumResult(spec.id, "done", start, end, host, pid, output_ids=output_ids))
    try:
        _commit(repo, finished, failed_records)
    except Exception as exc:  # the storage itself failed: none of the job's outputs is recorded
        error = f"{type(exc).__name__}: {exc}"
        details = traceback.format_exc()
        failed = [
            QuantumResult(r.id, "failed", r.start, r.end, host, pid, r.error or error, details)
            for r in results
        ]
        records = [
            dataclasses.replace(i.record, output_ids=[], status="failed", error=details)
            for i in finished
        ]
        _record_failures(repo, records + failed_records)
        return failed
    return results


def _commit(
    repo: Repository, finished: list[_Finished], failed_records: list[QuantumRecord]
) -> None:
    """Write the outputs of the finished quanta, and record all the job's quanta and then the
    outputs, as one transaction (see the module documentation)."""
    if finished:
        software = software_versions()
        with repo.transaction():
            for item in finished:
                spec = item.spec
                provenance = Provenance(
                    producer=spec.label,
                    quantum_id=spec.id,
                    input_ids=list(item.record.input_ids),
                    config_hash=spec.config_hash,
                    software=software,
                )
                for name, data in item.payload.items():
                    repo.store_bytes(
                        spec.outputs[name], data, mode="overwrite", provenance=provenance
                    )
            repo.registry.commit_quanta([i.record for i in finished] + failed_records)
    else:
        _record_failures(repo, failed_records)


def _record_failures(repo: Repository, records: list[QuantumRecord]) -> None:
    if not records:
        return
    try:
        repo.registry.commit_quanta(records)
    except Exception as exc:  # the storage itself may be what failed
        log.warning("the failure of %d quanta could not be recorded: %s", len(records), exc)


def _load_inputs(repo: Repository, spec: QuantumSpec, handover: _Handover) -> dict[str, Any]:
    def load(ref: DatasetRef) -> Any:
        if handover.has(ref):
            return handover.get(ref)
        if ref.id in spec.shared:
            return _read_shared(repo, ref, spec.run_token)
        return repo.read(ref)

    arguments: dict[str, Any] = {}
    for name, refs in spec.inputs.items():
        if name in spec.multiple:
            arguments[name] = {ref.data_id: load(ref) for ref in refs}
        else:
            arguments[name] = load(refs[0])
    return arguments


def _read_shared(repo: Repository, ref: DatasetRef, run_token: str) -> Any:
    """A deep copy of an input several quanta of the run read, decoded once per worker."""
    if _SHARED_RUN[0] != run_token:  # another run: its datasets may have been rewritten since
        _SHARED_INPUTS.clear()
        _SHARED_RUN[0] = run_token
    obj = _SHARED_INPUTS.get(ref.id)
    if obj is None:
        obj = _SHARED_INPUTS[ref.id] = repo.read(ref)
        while len(_SHARED_INPUTS) > SHARED_INPUTS_KEPT:
            _SHARED_INPUTS.popitem(last=False)
    else:
        _SHARED_INPUTS.move_to_end(ref.id)
    return copy.deepcopy(obj)


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
        if name not in spec.transient
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
