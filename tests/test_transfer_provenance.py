"""Transfer carries provenance: quantum records travel with the datasets they produced."""

from stages_toys import make_toy_repo, toy_pipeline_yaml

from repo.repository import Repository, transfer
from stages.framework.executors import run_graph
from stages.framework.graph import build_graph
from stages.framework.pipeline import Pipeline
from stages.framework.provenance import trace_provenance


def test_transfer_copies_quantum_records_and_compaction_keeps_them(tmp_path):
    source = make_toy_repo(str(tmp_path / "src"), n_visits=1)
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml())
    graph = build_graph(source, pipeline, output_run="out", inputs=["raw", "calib"])
    run_graph(source, graph, jobs=1)
    refs = source.query_datasets(collections=["out", "raw", "calib"], find_first=False)
    dest = Repository.create(str(tmp_path / "dest"))
    assert transfer(source, dest, refs) == len(refs)
    summary = source.query_datasets("visitSummary", collections="out")[0]
    expected = trace_provenance(source, [summary])
    got = trace_provenance(Repository(dest.storage.url), [summary])
    assert set(got.quanta) == set(expected.quanta) and got.quanta
    assert {n.id for n in got.raws()} == {n.id for n in expected.raws()}
    n_quanta = dest.registry.current_quanta().height
    assert dest.compact()["quanta"][1] == n_quanta
    assert Repository(dest.storage.url).registry.current_quanta().height == n_quanta
