"""The repository on local disk and S3: put/get, ids, collections, queries, verify, transfer."""

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from astropy.table import Table

from repo.errors import (
    CollectionError,
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeError,
    DimensionRecordError,
    DrpError,
    InvalidDataIdError,
    RepositoryError,
    StorageError,
    WhereSyntaxError,
)
from repo.registry import Provenance
from repo.repository import Repository, transfer
from tests.conftest import make_survey_records, small_catalog


@pytest.fixture
def repo(repo_url):
    r = Repository.create(repo_url)
    make_survey_records(r)
    r.register_dataset_type("src", ["visit", "detector"], "Catalog")
    r.register_dataset_type("summary", ["visit"], "StructuredData")
    return r


def _fill(repo, run="run1", visits=range(1, 21), detectors=range(4)):
    with repo.transaction():
        for v in visits:
            for d in detectors:
                repo.put(
                    small_catalog(v * 10 + d),
                    "src",
                    instrument="TestCam",
                    visit=v,
                    detector=d,
                    run=run,
                )


def test_create_and_open(repo_url):
    Repository.create(repo_url)
    with pytest.raises(RepositoryError, match="already a drp repository"):
        Repository.create(repo_url)
    assert Repository(repo_url).storage.url.endswith("repo")


def test_not_a_repository(tmp_path):
    with pytest.raises(RepositoryError, match="not a drp repository"):
        Repository(str(tmp_path / "nothing"))


def test_put_get_round_trip_and_paths(repo):
    table = small_catalog(3)
    ref = repo.put(table, "src", {"instrument": "TestCam", "visit": 3, "detector": 1}, run="run1")
    assert ref.data_id["band"] == "r" and ref.data_id["physical_filter"] == "TestCam-r"
    assert ref.path == (
        "run1/src/instrument=TestCam/band=r/visit=3/detector=1/src_TestCam_r_3_1.parquet"
    )
    out = repo.get("src", instrument="TestCam", visit=3, detector=1, collections="run1")
    assert out.colnames == table.colnames
    for name in table.colnames:
        np.testing.assert_array_equal(out[name], table[name])
    assert out["psfFlux"].unit == "nJy"
    summary = {"seeing": 0.71234567890123, "stars": 42, "bands": ["r"]}
    repo.put(summary, "summary", instrument="TestCam", visit=3, run="run1")
    assert repo.get("summary", instrument="TestCam", visit=3) == summary


def test_dataset_ids_are_deterministic(repo, repo_url):
    ref = repo.put(small_catalog(), "src", instrument="TestCam", visit=2, detector=0, run="a")
    other = Repository(repo_url).make_ref(
        "src", {"instrument": "TestCam", "visit": 2, "detector": 0}, "a"
    )
    assert ref.id == other.id and ref.path == other.path
    assert (
        repo.make_ref("src", {"instrument": "TestCam", "visit": 2, "detector": 0}, "b").id != ref.id
    )


def test_duplicate_put_error_skip_overwrite(repo):
    did = {"instrument": "TestCam", "visit": 5, "detector": 2}
    first = repo.put(small_catalog(1), "src", did, run="run1")
    with pytest.raises(DatasetExistsError, match="src.*visit.*5"):
        repo.put(small_catalog(2), "src", did, run="run1")
    skipped = repo.put(small_catalog(2), "src", did, run="run1", mode="skip")
    assert skipped.checksum == first.checksum
    np.testing.assert_array_equal(repo.get("src", did)["psfFlux"], small_catalog(1)["psfFlux"])
    repo.put(small_catalog(2), "src", did, run="run1", mode="overwrite")
    np.testing.assert_array_equal(repo.get("src", did)["psfFlux"], small_catalog(2)["psfFlux"])
    assert len(repo.query_datasets("src")) == 1
    assert repo.verify().ok


def test_bad_data_ids_and_types(repo):
    with pytest.raises(DatasetTypeError, match="unknown dataset type 'nope'"):
        repo.put(small_catalog(), "nope", instrument="TestCam", visit=1, detector=0, run="r")
    with pytest.raises(InvalidDataIdError, match="missing required key.*detector"):
        repo.put(small_catalog(), "src", instrument="TestCam", visit=1, run="r")
    with pytest.raises(InvalidDataIdError, match="no visit record"):
        repo.put(small_catalog(), "src", instrument="TestCam", visit=999, detector=0, run="r")
    with pytest.raises(InvalidDataIdError, match="band='r' contradicts the visit record"):
        repo.put(
            small_catalog(), "src", instrument="TestCam", visit=2, detector=0, band="r", run="r"
        )
    with pytest.raises(InvalidDataIdError, match="instrument"):
        repo.put(small_catalog(), "src", instrument="../../etc", visit=1, detector=0, run="r")
    with pytest.raises(CollectionError, match="collection name"):
        repo.put(small_catalog(), "src", instrument="TestCam", visit=1, detector=0, run="../up")
    with pytest.raises(CollectionError, match="reserved"):
        repo.put(small_catalog(), "src", instrument="TestCam", visit=1, detector=0, run="registry")
    with pytest.raises(DrpError):
        repo.put({"not": "a table"}, "src", instrument="TestCam", visit=1, detector=0, run="r")
    assert repo.query_datasets() == []  # nothing half-written
    assert repo.verify().ok


def test_dataset_type_conflicts(repo):
    assert repo.register_dataset_type("src", ["detector", "visit"], "Catalog").name == "src"
    with pytest.raises(DatasetTypeError, match="already registered"):
        repo.register_dataset_type("src", ["visit"], "Catalog")
    with pytest.raises(DatasetTypeError, match="already registered"):
        repo.register_dataset_type("src", ["visit", "detector"], "StructuredData")
    with pytest.raises(DatasetTypeError, match="storage class"):
        repo.register_dataset_type("x", ["visit"], "Blob")
    with pytest.raises(DatasetTypeError, match="not valid"):
        repo.register_dataset_type("bad name", ["visit"], "Catalog")
    with pytest.raises(InvalidDataIdError, match="unknown dimension"):
        repo.register_dataset_type("x", ["vist"], "Catalog")


def test_dimension_record_conflicts(repo):
    visit = {
        "instrument": "TestCam",
        "id": 1,
        "physical_filter": "TestCam-r",
        "band": "r",
        "day_obs": 20260102,
        "exposure_time": 11.0,
        "ra": 150.01,
        "dec": 2.0,
        "airmass": 1.01,
    }
    assert repo.insert_dimension_records("visit", [visit]) == 0  # identical: nothing new
    with pytest.raises(DimensionRecordError, match="exposure_time"):
        repo.insert_dimension_records("visit", [{**visit, "exposure_time": 99.0}])
    with pytest.raises(DimensionRecordError, match="unknown field"):
        repo.insert_dimension_records("visit", [{**visit, "colour": "blue"}])
    assert (
        repo.insert_dimension_records("visit", [{**visit, "exposure_time": 99.0}], update=True) == 1
    )
    (rec,) = repo.query_dimension_records("visit", where="visit = 1")
    assert rec["exposure_time"] == 99.0


def test_chained_collections_return_first_match(repo):
    did = {"instrument": "TestCam", "visit": 4, "detector": 0}
    repo.put(small_catalog(1), "src", did, run="old")
    repo.put(small_catalog(2), "src", did, run="new")
    repo.put(small_catalog(3), "src", {**did, "detector": 1}, run="old")
    repo.registry.define_chain("chain", ["new", "old"])
    ref = repo.find_dataset("src", did, collections="chain")
    assert ref.run == "new"
    assert repo.find_dataset("src", {**did, "detector": 1}, collections="chain").run == "old"
    refs = repo.query_datasets("src", collections="chain")
    assert sorted((r.data_id["detector"], r.run) for r in refs) == [(0, "new"), (1, "old")]
    assert len(repo.query_datasets("src", collections="chain", find_first=False)) == 3
    with pytest.raises(DatasetNotFoundError, match="several runs"):
        repo.find_dataset("src", did)
    repo.registry.define_chain("chain", ["old", "new"])  # redefine: order flips
    assert repo.find_dataset("src", did, collections="chain").run == "old"
    with pytest.raises(CollectionError, match="contain itself|cycle"):
        repo.registry.define_chain("chain", ["old", "chain"])
    with pytest.raises(CollectionError, match="unknown collection"):
        repo.registry.define_chain("c2", ["nope"])
    with pytest.raises(CollectionError, match="in chain 'chain'"):
        repo.remove_run("old")
    names = {(c.name, c.type) for c in repo.collections()}
    assert names == {("old", "RUN"), ("new", "RUN"), ("chain", "CHAINED")}


def test_queries_with_where(repo):
    _fill(repo)
    refs = repo.query_datasets("src", where="visit IN (1..20) AND band = 'r' AND detector != 3")
    expected = {(v, d) for v in range(1, 21) if v % 2 == 1 for d in range(3)}
    assert {(r.data_id["visit"], r.data_id["detector"]) for r in refs} == expected
    refs = repo.query_datasets(
        "src",
        where="visit.exposure_time > :t AND detector IN (:dets)",
        binds={"t": 27.5, "dets": [0, 2]},
    )
    assert {(r.data_id["visit"], r.data_id["detector"]) for r in refs} == {
        (v, d) for v in range(18, 21) for d in (0, 2)
    }
    strided = repo.query_datasets("src", where="visit IN (1..20:5)")
    assert sorted({r.data_id["visit"] for r in strided}) == [1, 6, 11, 16]
    assert len(strided) == 16
    with pytest.raises(WhereSyntaxError, match="column"):
        repo.query_datasets("src", where="visit IN (1..3 AND band = 'r'")
    with pytest.raises(WhereSyntaxError):
        repo.query_datasets("src", where="band = 'r'; DROP TABLE datasets")
    assert len(repo.query_datasets("src")) == 80  # the hostile query changed nothing


def test_query_data_ids_and_records(repo):
    ids = repo.query_data_ids(["visit", "detector"], where="band = 'g' AND visit < 7")
    assert [(i["visit"], i["detector"]) for i in ids] == [
        (v, d) for v in (2, 4, 6) for d in range(4)
    ]
    assert all(i["physical_filter"] == "TestCam-g" for i in ids)
    _fill(repo, visits=[1, 2], detectors=[0])
    ids = repo.query_data_ids(["visit"], datasets="src")
    assert [i["visit"] for i in ids] == [1, 2]
    recs = repo.query_dimension_records("visit", where="exposure_time >= 29")
    assert [r["id"] for r in recs] == [19, 20]
    dets = repo.query_dimension_records("detector", where="name = 'D2'")
    assert dets == [
        {
            "instrument": "TestCam",
            "id": 2,
            "name": "D2",
            "nx": 64,
            "ny": 64,
            "focal_plane_x": None,
            "focal_plane_y": None,
            "orientation": None,
            "pixel_size": None,
        }
    ]


def test_transaction_rolls_back(repo):
    with pytest.raises(RuntimeError), repo.transaction():
        repo.put(small_catalog(), "src", instrument="TestCam", visit=1, detector=0, run="r")
        repo.put(small_catalog(), "src", instrument="TestCam", visit=1, detector=1, run="r")
        raise RuntimeError("stage failed")
    assert repo.query_datasets("src") == []
    report = repo.verify()
    assert report.ok, report


def test_remove_and_verify(repo):
    _fill(repo, visits=[1, 2, 3], detectors=[0, 1])
    refs = repo.query_datasets("src", where="visit = 2")
    assert repo.remove_datasets(refs) == 2
    assert len(repo.query_datasets("src")) == 4
    assert not any(repo.storage.exists(r.path) for r in refs)
    assert repo.verify().ok
    # break things: delete a file, corrupt another, leave an orphan
    a, b = repo.query_datasets("src", where="visit = 1")
    repo.storage.delete(a.path)
    repo.storage.put_bytes(b.path, b"garbage")
    repo.storage.put_bytes("run1/src/stray.parquet", b"x")
    report = repo.verify()
    assert report.missing == [repo.storage.uri(a.path)]
    assert report.bad_size == [repo.storage.uri(b.path)]
    assert report.orphans == [repo.storage.uri("run1/src/stray.parquet")]
    with pytest.raises(StorageError, match="missing or unreadable.*drp verify"):
        repo.get(a)
    with pytest.raises(CorruptDatasetError, match="recorded as"):
        repo.get(b)
    repo.delete_orphans(report)
    assert repo.verify().orphans == []
    assert repo.remove_run("run1") == 4
    assert repo.query_datasets() == []


def test_checksum_mismatch_of_same_size(repo):
    ref = repo.put({"a": 1}, "summary", instrument="TestCam", visit=1, run="r")
    repo.storage.put_bytes(ref.path, repo.storage.get_bytes(ref.path).replace(b"1", b"2"))
    assert repo.verify().bad_checksum == [repo.storage.uri(ref.path)]


def test_compaction_keeps_everything(repo, repo_url):
    for v in range(1, 6):
        repo.put(small_catalog(v), "src", instrument="TestCam", visit=v, detector=0, run="r")
    repo.remove_datasets(repo.query_datasets("src", where="visit = 3"))
    before = {r.id for r in repo.query_datasets("src")}
    log_dir = "registry/datasets"
    assert len(repo.storage.list_names(log_dir)) == 6
    merged = repo.compact()
    assert merged["datasets"][0] == 6
    assert len(repo.storage.list_names(log_dir)) == 1
    fresh = Repository(repo_url)
    assert {r.id for r in fresh.query_datasets("src")} == before
    assert len(before) == 4
    assert fresh.verify().ok


def test_provenance_is_recorded(repo):
    prov = Provenance(
        producer="calibrate", quantum_id="q1", input_ids=["a", "b"], config_hash="abc"
    )
    ref = repo.put(
        small_catalog(), "src", instrument="TestCam", visit=1, detector=0, run="r", provenance=prov
    )
    row = repo.registry.current_datasets().filter(pl.col("dataset_id") == ref.id).row(0, named=True)
    assert row["producer"] == "calibrate" and row["input_ids"] == ["a", "b"]
    assert row["config_hash"] == "abc" and '"numpy"' in row["software"]
    assert row["checksum"].startswith("sha256:") and row["size"] == ref.size


def test_sql_views_and_read_only(repo):
    _fill(repo, visits=[1, 2, 3], detectors=[0, 1])
    table = repo.sql(
        "SELECT band, visit, count(*) AS n, sum(psfFlux) AS s FROM src "
        "GROUP BY band, visit ORDER BY visit"
    )
    assert table.column("visit").to_pylist() == [1, 2, 3]
    assert table.column("n").to_pylist() == [20, 20, 20]
    expected = sum(float(np.sum(small_catalog(10 + d)["psfFlux"])) for d in (0, 1))
    assert table.column("s")[0].as_py() == pytest.approx(expected, rel=1e-12)
    joined = repo.sql(
        "SELECT DISTINCT s.visit, v.exposure_time FROM src s JOIN visit v "
        "USING (instrument, visit) ORDER BY 1"
    )
    assert joined.column("exposure_time").to_pylist() == [11.0, 12.0, 13.0]
    for bad in (
        "DROP TABLE datasets",
        "COPY datasets TO 'x.csv'",
        "SELECT 1; SELECT 2",
        "ATTACH 'x.db'",
        "CREATE TABLE t AS SELECT 1",
    ):
        with pytest.raises(DrpError, match="read-only SELECT"):
            repo.sql(bad)
    with pytest.raises(DrpError, match="SQL error"):
        repo.sql("SELECT nope FROM src")


def test_sql_reads_the_repository_and_nothing_else(repo, tmp_path):
    """Every way out of the catalogs and registry views is refused with a clear error, on
    local and S3 repositories; the legitimate queries still work."""
    _fill(repo, visits=[1, 2], detectors=[0, 1])
    secret = tmp_path / "secret.csv"
    secret.write_text("key,value\naws,SECRET\n")
    escapes = [
        f"SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/proc/self/environ')",
        "SELECT * FROM glob('/work/**')",
        f"SELECT * FROM glob('{tmp_path}/*')",
        "SELECT * FROM read_parquet('s3://*/**/*.parquet')",
        "SELECT current_setting('enable_external_access')",  # may be read, not changed
    ]
    for query in escapes[:-1]:
        with pytest.raises(DrpError, match="file system operations are disabled"):
            repo.sql(query)
    assert repo.sql(escapes[-1]).to_pylist() == [
        {"current_setting('enable_external_access')": False}
    ]
    # the same through the command line
    from click.testing import CliRunner

    from cli.main import cli

    result = CliRunner().invoke(cli, ["sql", repo.storage.url, escapes[0]])
    assert result.exit_code == 1 and "SECRET" not in result.output
    assert "catalogs and registry views only" in result.output
    # legitimate queries: catalogs (with hive columns), registry, dimension views, joins
    assert repo.sql("SELECT count(*) AS n FROM src").column("n").to_pylist() == [40]
    joined = repo.sql(
        "SELECT d.dataset_type, count(*) AS n FROM datasets d JOIN visit v ON d.visit = v.id "
        "GROUP BY 1"
    )
    assert joined.to_pylist() == [{"dataset_type": "src", "n": 4}]


def test_sql_limits_time_and_memory(repo):
    with pytest.raises(DrpError, match="stopped after its time limit of 0.5 s"):
        repo.sql("SELECT count(*) FROM range(10000000000) a, range(1000) b", timeout=0.5)
    with pytest.raises(DrpError, match="memory limit 'lots'"):
        repo.sql("SELECT 1", memory_limit="lots")
    with pytest.raises(DrpError, match="needs more than its memory limit of 20MB"):
        repo.sql("SELECT list(range) FROM range(100000000)", memory_limit="20MB")


def test_lake_is_readable_without_drp(tmp_path):
    """DuckDB, polars and pyarrow read the catalogs straight from the hive-partitioned lake."""
    repo = Repository.create(str(tmp_path / "lake"))
    make_survey_records(repo)
    repo.register_dataset_type("src", ["visit", "detector"], "Catalog")
    _fill(repo, visits=[1, 2, 3, 4], detectors=[0, 1])
    root = tmp_path / "lake" / "run1" / "src"
    con = duckdb.connect()
    rows = con.sql(
        f"SELECT band, count(DISTINCT visit) FROM read_parquet('{root}/**/*.parquet', "
        "hive_partitioning=true) WHERE detector = 1 GROUP BY band ORDER BY band"
    ).fetchall()
    assert rows == [("g", 2), ("r", 2)]
    frame = (
        pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True)
        .filter(pl.col("visit") == 3)
        .collect()
    )
    assert frame.height == 20 and set(frame["band"]) == {"r"}
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(root), format="parquet", partitioning="hive")
    assert dataset.to_table(filter=ds.field("visit") == 2).num_rows == 20


def test_transfer_local_to_s3(tmp_path, s3_bucket):
    src = Repository.create(str(tmp_path / "src"))
    make_survey_records(src)
    src.register_dataset_type("src", ["visit", "detector"], "Catalog")
    _fill(src, visits=[1, 2, 3], detectors=[0, 1])
    dest = Repository.create(f"s3://{s3_bucket}/dest")
    refs = src.query_datasets("src", where="visit IN (1, 2)")
    assert transfer(src, dest, refs) == 4
    assert transfer(src, dest, refs) == 0  # idempotent
    got = dest.query_datasets("src")
    assert {r.id for r in got} == {r.id for r in refs}
    for ref in refs:
        assert dest.storage.get_bytes(ref.path) == src.storage.get_bytes(ref.path)
    table = dest.get("src", instrument="TestCam", visit=2, detector=1)
    np.testing.assert_array_equal(table["psfFlux"], small_catalog(21)["psfFlux"])
    assert dest.verify().ok


def test_arrow_and_polars_through_the_repository(repo):
    repo.register_dataset_type("tab", ["visit"], "Catalog")
    arrow = pa.table({"x": [1.0, 2.0]})
    repo.put(arrow, "tab", instrument="TestCam", visit=1, run="r")
    assert repo.get("tab", instrument="TestCam", visit=1).equals(arrow)
    frame = pl.DataFrame({"y": [1, 2, 3]})
    repo.put(frame, "tab", instrument="TestCam", visit=2, run="r")
    assert repo.get("tab", instrument="TestCam", visit=2).equals(frame)
    assert isinstance(Table, type)


def test_visit_detector_regions_are_records(repo):
    region = "[[150.0, 2.0], [150.1, 2.0], [150.1, 2.1], [150.0, 2.1]]"
    repo.insert_dimension_records(
        "visit_detector_region",
        [{"instrument": "TestCam", "visit": 1, "detector": d, "region": region} for d in range(4)],
    )
    recs = repo.query_dimension_records("visit_detector_region", where="detector > 1")
    assert [(r["visit"], r["detector"]) for r in recs] == [(1, 2), (1, 3)]
    assert recs[0]["region"] == region
    with pytest.raises(DimensionRecordError, match="conflicts"):
        repo.insert_dimension_records(
            "visit_detector_region",
            [{"instrument": "TestCam", "visit": 1, "detector": 0, "region": "[]"}],
        )
    with pytest.raises(DimensionRecordError, match="unknown dimension element"):
        repo.query_dimension_records("visits")


def test_overwrite_inside_a_failed_transaction_leaves_no_dangling_record(repo):
    did = {"instrument": "TestCam", "visit": 1, "detector": 0}
    repo.put(small_catalog(1), "src", did, run="r")
    repo.put(small_catalog(2), "src", {**did, "detector": 1}, run="r")
    with pytest.raises(RuntimeError), repo.transaction():
        repo.put(small_catalog(3), "src", did, run="r", mode="overwrite")
        raise RuntimeError("stage failed after overwriting")
    # the overwritten content is gone, and so is its record; the other dataset is untouched
    assert [r.data_id["detector"] for r in repo.query_datasets("src")] == [1]
    assert repo.verify().ok


def test_a_fresh_reader_queries_the_files_as_a_loaded_registry_does(tmp_path):
    """A process that has not read the registry answers query_datasets from the files (DuckDB,
    where-clause before the latest row per dataset): the same refs as after loading it, with
    removals, overwrites, find-first over runs and record joins, over merged and commit files."""
    from tests.conftest import make_survey_records, small_catalog

    root = str(tmp_path / "repo")
    repo = Repository.create(root)
    make_survey_records(repo, n_visits=12, n_detectors=3)
    repo.register_dataset_type("cat", ["visit", "detector"], "Catalog")
    for run in ("a", "b"):
        for visit in range(1, 13):
            with repo.transaction():
                for detector in range(3):
                    repo.put(small_catalog(visit), "cat", instrument="TestCam", visit=visit,
                             detector=detector, run=run)  # fmt: skip
    repo.compact()  # one merged file, then commit files after it
    with repo.transaction():
        repo.put(small_catalog(99), "cat", instrument="TestCam", visit=3, detector=1, run="a",
                 mode="overwrite")  # fmt: skip
    repo.remove_datasets(repo.query_datasets("cat", collections="b", where="visit = 5"))
    queries = [
        ("a", ""),
        (["b", "a"], "visit IN (4..6)"),
        (["a", "b"], "band = 'r' AND detector < 2"),
        ("b", "visit.airmass > 1.05 AND detector = 0"),
        ("b", "visit = 5"),
    ]
    for collections, where in queries:
        fresh = Repository(root)
        assert fresh.registry.datasets.unread_files() is not None  # the cold path is taken
        cold = fresh.query_datasets("cat", collections=collections, where=where)
        loaded = Repository(root)
        loaded.registry.current_datasets()  # read the registry: the usual path
        assert loaded.registry.datasets.unread_files() is None
        warm = loaded.query_datasets("cat", collections=collections, where=where)
        assert [(r.id, r.run, r.path) for r in cold] == [(r.id, r.run, r.path) for r in warm]
        assert [dict(r.data_id) for r in cold] == [dict(r.data_id) for r in warm]
    assert not Repository(root).query_datasets("cat", collections="b", where="visit = 5")
    overwritten = Repository(root).query_datasets(
        "cat", collections="a", where="visit = 3 AND detector = 1"
    )
    assert len(overwritten) == 1
    content = Repository(root).get(overwritten[0])["psfFlux"]
    assert np.array_equal(content, small_catalog(99)["psfFlux"])  # the overwrite, not the first
