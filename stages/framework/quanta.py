"""Quanta and the quantum graph: the units of work of a pipeline run and how they depend on
each other (built by :func:`stages.framework.graph.build_graph`)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from repo.dimensions import DataId
from repo.registry import DatasetRef
from repo.skymap import RingsSkyMap

from .pipeline import Pipeline

QUANTUM_ID_NAMESPACE = uuid.UUID("0c7b7f0e-3f38-4b8e-9a44-2f1d5e6c9b21")


@dataclass
class Quantum:
    """One unit of work: a stage applied to one dataId.

    Attributes
    ----------
    id : str
        Deterministic id: a UUID5 of (stage label, output run, dataId).
    label : str
        The stage's label in the pipeline.
    data_id : DataId
        The quantum dataId, with implied dimensions.
    inputs : dict
        Connection name -> input refs (one for a single input), prerequisites included.
    outputs : dict
        Connection name -> the predicted output ref in the output run (its path is filled in
        when the quantum is sent to a worker, see :func:`stages.framework.runner.make_spec`).
    upstream : set of str
        Ids of the quanta that produce some of the inputs.
    status : str
        ``run``, or ``skip`` when its outputs exist already with the same config.
    transient : frozenset of str
        Names of the outputs handed in memory to the quanta that read them, not written.
    """

    id: str
    label: str
    data_id: DataId
    inputs: dict[str, list[DatasetRef]]
    outputs: dict[str, DatasetRef]
    upstream: set[str] = field(default_factory=set)
    status: str = "run"
    dimensions: tuple[str, ...] = ()
    transient: frozenset[str] = frozenset()

    @property
    def short_id(self) -> dict[str, Any]:
        """The required quantum dimensions only, for messages."""
        names = self.dimensions or tuple(self.data_id)
        return {k: self.data_id[k] for k in names if k in self.data_id}

    def __str__(self) -> str:
        return f"{self.label} {self.short_id}"


@dataclass
class QuantumGraph:
    """The quanta of a pipeline run in dependency order, and how they depend on each other."""

    pipeline: Pipeline
    output_run: str
    collections: list[str]
    quanta: dict[str, Quantum]
    skymap: RingsSkyMap | None = None
    where: str = ""

    @cached_property
    def shared_inputs(self) -> frozenset[str]:
        """Ids of the datasets that several quanta to run read (master calibrations, the camera,
        a reference catalog): a worker keeps them decoded for the run (see
        :mod:`stages.framework.runner`)."""
        readers = Counter(
            ref.id
            for q in self.quanta.values()
            if q.status == "run"
            for refs in q.inputs.values()
            for ref in refs
        )
        return frozenset(i for i, n in readers.items() if n > 1)

    @cached_property
    def token(self) -> str:
        """A random id of this graph's run: what a worker keeps for a run it forgets after."""
        return uuid.uuid4().hex

    @cached_property
    def skymap_json(self) -> str | None:
        """The sky map's config as JSON, for the workers (made once, shared by every spec)."""
        return self.skymap.config.to_json() if self.skymap is not None else None

    def by_label(self) -> dict[str, list[Quantum]]:
        """Quanta of each stage, in pipeline order."""
        groups: dict[str, list[Quantum]] = {label: [] for label in self.pipeline.labels}
        for quantum in self.quanta.values():
            groups[quantum.label].append(quantum)
        return groups

    def downstream(self) -> dict[str, set[str]]:
        """Quantum id -> ids of the quanta that consume its outputs."""
        result: dict[str, set[str]] = {qid: set() for qid in self.quanta}
        for quantum in self.quanta.values():
            for up in quantum.upstream:
                result[up].add(quantum.id)
        return result

    def jobs(self) -> list[list[str]]:
        """The quanta to run grouped into jobs, each run in one worker, in dependency order.

        A quantum and the quanta that read one of its in-memory (transient) outputs are in the
        same job: the connected groups of quanta linked that way. Groups that depend on each
        other both ways (a warp reading in-memory calexps and a visit summary made from the
        same visit's sources) are merged, so that jobs form no cycle. Within a job quanta are
        in dependency order; jobs are ordered by their first quantum.
        """
        order = {
            qid: i for i, qid in enumerate(q for q in self.quanta if self.quanta[q].status == "run")
        }
        parent = {qid: qid for qid in order}

        def root(qid: str) -> str:
            while parent[qid] != qid:
                parent[qid] = parent[parent[qid]]
                qid = parent[qid]
            return qid

        transient_producer = {
            ref.id: q.id
            for q in self.quanta.values()
            if q.status == "run"
            for name, ref in q.outputs.items()
            if name in q.transient
        }
        for qid in order:
            for refs in self.quanta[qid].inputs.values():
                for ref in refs:
                    producer = transient_producer.get(ref.id)
                    if producer is not None:
                        parent[root(qid)] = root(producer)
        groups: dict[str, list[str]] = {}
        for qid in order:
            groups.setdefault(root(qid), []).append(qid)
        edges = {
            g: {root(u) for q in members for u in self.quanta[q].upstream if u in order} - {g}
            for g, members in groups.items()
        }
        for component in _cycles(edges):
            head = min(component, key=lambda g: order[groups[g][0]])
            for g in component:
                if g != head:
                    groups[head].extend(groups.pop(g))
            groups[head].sort(key=order.__getitem__)
        return sorted(groups.values(), key=lambda job: order[job[0]])

    def counts(self) -> dict[str, dict[str, int]]:
        """Per stage: number of quanta, to run and to skip."""
        out = {}
        for label, quanta in self.by_label().items():
            run = sum(q.status == "run" for q in quanta)
            out[label] = {"quanta": len(quanta), "run": run, "skip": len(quanta) - run}
        return out

    def describe(self, *, details: bool = False) -> str:
        """A summary of the graph: quanta per stage and stage dependencies (and every quantum)."""
        counts = self.counts()
        total = sum(c["quanta"] for c in counts.values())
        to_run = sum(c["run"] for c in counts.values())
        lines = [
            f"quantum graph: {total} quanta in {len(counts)} stage(s), {to_run} to run, "
            f"{total - to_run} already done; output run {self.output_run!r}, "
            f"searching {', '.join(self.collections)}"
        ]
        if self.where:
            lines.append(f"where: {self.where}")
        width = max((len(label) for label in counts), default=0)
        for label, c in counts.items():
            dims = ", ".join(self.pipeline.stage(label).stage_class.quantum_group().required)
            lines.append(
                f"  {label:<{width}}  {c['quanta']:>6} quanta  {c['run']:>6} to run  "
                f"{c['skip']:>6} done  ({dims})"
            )
        edges: dict[tuple[str, str], int] = {}
        for quantum in self.quanta.values():
            for up in quantum.upstream:
                key = (self.quanta[up].label, quantum.label)
                edges[key] = edges.get(key, 0) + 1
        if edges:
            rank = {label: i for i, label in enumerate(self.pipeline.labels)}
            lines.append("dependencies:")
            lines.extend(
                f"  {down} <- {up}: {n} quantum dependencies"
                for (up, down), n in sorted(
                    edges.items(), key=lambda e: (rank[e[0][1]], rank[e[0][0]])
                )
            )
        in_memory = sorted(
            {
                q.outputs[name].dataset_type.name
                for q in self.quanta.values()
                for name in q.transient
            }
        )
        if in_memory:
            jobs = self.jobs()
            longest = max((len(j) for j in jobs), default=0)
            lines.append(
                f"in memory, not written: {', '.join(in_memory)} (--keep-intermediates writes "
                f"them); {to_run} quanta in {len(jobs)} jobs of up to {longest} quanta"
            )
        if details:
            lines.append("quanta:")
            order = {qid: i for i, qid in enumerate(self.quanta)}
            for quantum in self.quanta.values():
                deps = ", ".join(
                    str(self.quanta[u]) for u in sorted(quantum.upstream, key=order.__getitem__)
                )
                line = f"  [{quantum.status}] {quantum}"
                lines.append(line + (f" <- {deps}" if deps else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The graph as JSON-compatible data (quanta with inputs, outputs and upstream ids)."""
        return {
            "output_run": self.output_run,
            "collections": self.collections,
            "where": self.where,
            "stages": self.counts(),
            "quanta": [
                {
                    "id": q.id,
                    "stage": q.label,
                    "data_id": dict(q.data_id),
                    "status": q.status,
                    "inputs": {k: [r.id for r in v] for k, v in q.inputs.items()},
                    "outputs": {k: r.id for k, r in q.outputs.items()},
                    "in_memory": sorted(q.transient),
                    "upstream": sorted(q.upstream),
                }
                for q in self.quanta.values()
            ],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=1)


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node of a directed graph (Tarjan's
    algorithm, iterative: jobs can number in the hundreds of thousands)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def quantum_id_for(label: str, run: str, data_id: DataId) -> str:
    """The deterministic id of the quantum of stage ``label`` for ``data_id`` in ``run``.

    ``data_id`` holds the required quantum dimensions only.
    """
    return fast_uuid5(QUANTUM_ID_NAMESPACE, f"{label}/{run}/{data_id.canonical()}")


def fast_uuid5(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``, without the UUID object (graph building makes
    two per quantum)."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
