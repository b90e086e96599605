"""Provenance: the chain of quanta and datasets behind a dataset, back to the raws.

Every dataset a pipeline writes records the quantum that produced it and the ids of that quantum's
inputs; every quantum has a record in the registry's quanta table (stage, dataId, config and its
hash, software versions, host, pid, start and end). :func:`trace_provenance` walks from datasets
through their quanta to their inputs until it reaches datasets no quantum produced (raws,
calibrations and reference catalogs that were ingested or put), and :class:`ProvenanceGraph`
prints the result as a tree or gives it as JSON-compatible data. A dataset a run handed from
stage to stage in memory (a pipeline's intermediates) has no record of its own; it is found
through the quantum whose outputs list its id, named from that quantum's dataId, and the walk
goes on through that quantum's inputs.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from repo.dimensions import DIMENSION_NAMES, UNIVERSE, DataId
from repo.registry import DatasetRef, QuantumRecord, dataset_id_for
from repo.repository import Repository


@dataclass
class DatasetNode:
    """A dataset in a provenance graph.

    ``found`` is False if it has no record: it is no longer in the repository, or it was never
    written (``in_memory``: an intermediate its producing quantum handed over in memory).
    """

    id: str
    dataset_type: str = ""
    run: str = ""
    data_id: dict[str, Any] = field(default_factory=dict)
    producer: str = ""
    quantum_id: str | None = None
    input_ids: list[str] = field(default_factory=list)
    config_hash: str | None = None
    found: bool = True
    in_memory: bool = False

    def label(self) -> str:
        if self.in_memory:
            return (
                f"{self.dataset_type or 'dataset ' + self.id} {_short(self.data_id)} in "
                f"{self.run} (not written: handed over in memory)"
            )
        if not self.found:
            return f"dataset {self.id} (no longer in the repository)"
        return f"{self.dataset_type} {_short(self.data_id)} in {self.run}"


@dataclass
class ProvenanceGraph:
    """Datasets and the quanta that produced them, from some root datasets back to raws."""

    roots: list[str]
    datasets: dict[str, DatasetNode]
    quanta: dict[str, QuantumRecord]

    def inputs_of(self, dataset_id: str) -> list[str]:
        """Ids of the inputs of the quantum that produced a dataset."""
        node = self.datasets[dataset_id]
        record = self.quanta.get(node.quantum_id or "")
        return list(record.input_ids) if record is not None else list(node.input_ids)

    def raws(self) -> list[DatasetNode]:
        """The datasets at the start of the chains: those no quantum produced."""
        return [n for n in self.datasets.values() if n.found and n.quantum_id is None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible: roots, datasets by id, quanta by id."""
        return {
            "roots": self.roots,
            "datasets": {k: asdict(v) for k, v in self.datasets.items()},
            "quanta": {k: asdict(v) for k, v in self.quanta.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def to_text(self) -> str:
        """An indented tree; a dataset or quantum met again is shown once, then referred to."""
        lines: list[str] = []
        shown: set[str] = set()
        for root in self.roots:
            self._text(root, "", "", lines, shown)
        return "\n".join(lines)

    def _text(
        self, dataset_id: str, first: str, rest: str, lines: list[str], shown: set[str]
    ) -> None:
        node = self.datasets.get(dataset_id)
        if node is None:
            lines.append(f"{first}dataset {dataset_id} (beyond the depth asked for)")
            return
        if dataset_id in shown and node.quantum_id is not None:
            lines.append(f"{first}{node.label()} (see above)")
            return
        shown.add(dataset_id)
        record = self.quanta.get(node.quantum_id or "")
        if node.quantum_id is None:
            origin = f"  [{node.producer or 'put'}: no producing quantum]" if node.found else ""
            lines.append(f"{first}{node.label()}{origin}")
            return
        if record is None:
            made = f"made by {node.producer}" if node.producer else "its quantum record is missing"
            lines.append(
                f"{first}{node.label()}  [{made} ({node.quantum_id}), no pipeline quantum]"
            )
            return
        lines.append(f"{first}{node.label()}")
        if record.quantum_id in shown:  # its inputs are listed above, under another output
            lines.append(f"{rest}└── quantum {record.stage} {_short(record.data_id)} (see above)")
            return
        shown.add(record.quantum_id)
        lines.append(f"{rest}└── {_describe_quantum(record)}")
        inputs = self.inputs_of(dataset_id)
        for i, input_id in enumerate(inputs):
            last = i == len(inputs) - 1
            self._text(
                input_id,
                rest + "    " + ("└── " if last else "├── "),
                rest + "    " + ("    " if last else "│   "),
                lines,
                shown,
            )


def _describe_quantum(record: QuantumRecord) -> str:
    when = datetime.datetime.fromtimestamp(record.start, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    versions = ", ".join(
        f"{k} {record.software[k]}" for k in ("drp", "numpy", "astropy") if k in record.software
    )
    return (
        f"quantum {record.stage} {_short(record.data_id)} [{record.status}] on {record.host} "
        f"(pid {record.pid}) at {when} for {record.end - record.start:.2f} s; config "
        f"{record.config_hash[:12]}; {versions}"
    )


def _short(data_id: dict[str, Any]) -> str:
    """A dataId as ``key=value`` words in the dimensions' order, without the values that
    others imply (a visit's band and day): ``instrument=SimCam visit=12 detector=3``."""
    given = {k for k, v in data_id.items() if v is not None}
    implied = {i for k in given if k in UNIVERSE for i in UNIVERSE[k].implies}
    order = {name: i for i, name in enumerate(DIMENSION_NAMES)}
    keys = sorted(given - implied, key=lambda k: order.get(k, len(order)))
    return " ".join(f"{k}={data_id[k]}" for k in keys) or "(no dimensions)"


def trace_provenance(
    repo: Repository, refs: Sequence[DatasetRef], *, max_depth: int | None = None
) -> ProvenanceGraph:
    """Walk from datasets through producing quanta to their inputs, back to the raws.

    Parameters
    ----------
    repo
        The repository.
    refs
        The datasets to explain.
    max_depth
        Stop after this many quanta along each chain (all the way by default).
    """
    datasets: dict[str, DatasetNode] = {}
    quanta: dict[str, QuantumRecord] = {}
    frontier = list(dict.fromkeys(ref.id for ref in refs))
    current = repo.registry.current_datasets(refresh=True)
    made_by: dict[str, str] | None = None  # unwritten output id -> quantum id, when first needed
    depth = 0
    while frontier:
        rows = current.filter(pl.col("dataset_id").is_in(frontier)).to_dicts()
        by_id = {row["dataset_id"]: row for row in rows}
        for dataset_id in frontier:
            row = by_id.get(dataset_id)
            datasets[dataset_id] = _node(row) if row else DatasetNode(dataset_id, found=False)
        unwritten = [i for i in frontier if not datasets[i].found]
        if unwritten:
            if made_by is None:
                made_by = _unwritten_outputs(repo)
            datasets.update(_in_memory_nodes(repo, unwritten, made_by))
        wanted = {n.quantum_id for n in datasets.values() if n.quantum_id} - set(quanta)
        quanta.update(repo.registry.get_quanta(wanted))
        depth += 1
        if max_depth is not None and depth >= max_depth:
            break
        next_ids: list[str] = []
        for dataset_id in frontier:
            node = datasets[dataset_id]
            if node.quantum_id is None:
                continue
            record = quanta.get(node.quantum_id)
            inputs = record.input_ids if record is not None else node.input_ids
            next_ids.extend(i for i in inputs if i not in datasets)
        frontier = list(dict.fromkeys(next_ids))
    return ProvenanceGraph(list(dict.fromkeys(ref.id for ref in refs)), datasets, quanta)


def _unwritten_outputs(repo: Repository) -> dict[str, str]:
    """Output id -> quantum id, of the outputs of recorded quanta that were never written (no
    dataset row at all: a removed dataset keeps its removal row)."""
    quanta = repo.registry.current_quanta().select("quantum_id", "output_ids")
    outputs = quanta.explode("output_ids").drop_nulls("output_ids")
    known = repo.registry.datasets.state.select("dataset_id")  # puts and removals
    unwritten = outputs.join(known, left_on="output_ids", right_on="dataset_id", how="anti")
    return dict(zip(unwritten["output_ids"], unwritten["quantum_id"], strict=True))


def _in_memory_nodes(
    repo: Repository, dataset_ids: list[str], made_by: dict[str, str]
) -> dict[str, DatasetNode]:
    """Nodes of datasets no record holds but some quantum made (handed over in memory)."""
    producers = {i: made_by[i] for i in dataset_ids if i in made_by}
    if not producers:
        return {}
    records = repo.registry.get_quanta(producers.values())
    dataset_types = repo.registry.dataset_types()
    nodes = {}
    for dataset_id, quantum_id in producers.items():
        record = records[quantum_id]
        data_id = {k: v for k, v in record.data_id.items() if v is not None}
        name = ""
        for dataset_type in dataset_types:  # the id follows from (type, run, dataId)
            required = dataset_type.group.required
            if set(required) <= set(data_id) and dataset_id == dataset_id_for(
                dataset_type.name, record.run, DataId(data_id), required
            ):
                name = dataset_type.name
                data_id = {k: data_id[k] for k in dataset_type.group.names if k in data_id}
                break
        nodes[dataset_id] = DatasetNode(
            id=dataset_id,
            dataset_type=name,
            run=record.run,
            data_id=data_id,
            producer=record.stage,
            quantum_id=quantum_id,
            input_ids=list(record.input_ids),
            config_hash=record.config_hash,
            found=False,
            in_memory=True,
        )
    return nodes


def _node(row: dict[str, Any]) -> DatasetNode:
    return DatasetNode(
        id=row["dataset_id"],
        dataset_type=row["dataset_type"],
        run=row["run"],
        data_id={k: row[k] for k in DIMENSION_NAMES if row.get(k) is not None},
        producer=row["producer"] or "",
        quantum_id=row["quantum_id"],
        input_ids=list(row["input_ids"] or []),
        config_hash=row["config_hash"],
    )
