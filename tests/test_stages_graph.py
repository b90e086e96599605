"""Quantum-graph building: joins, sky-region overlaps against brute force, where, and errors."""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from stages_toys import (
    TOY_SKYMAP,
    VD,
    Calibrate,
    detector_region,
    make_toy_repo,
    toy_pipeline_yaml,
)

from cli.main import cli
from repo.errors import (
    DatasetNotFoundError,
    DatasetTypeError,
    DimensionRecordError,
    WhereSyntaxError,
)
from repo.regions import ConvexPolygon
from repo.repository import Repository
from repo.skymap import RingsSkyMap
from stages.framework.base import Connection, Stage
from stages.framework.graph import NothingSelectedError, build_graph
from stages.framework.overlaps import MissingRegionError, find_polygon_patches
from stages.framework.pipeline import Pipeline, StageDef
from stages.framework.quanta import quantum_id_for
from stages.framework.runner import make_spec
from stages.framework.skymap_setup import ensure_tract_records

SKY = RingsSkyMap(TOY_SKYMAP)


@pytest.fixture
def toy(tmp_path):
    return make_toy_repo(str(tmp_path / "repo"))


def toy_pipeline(**config) -> Pipeline:
    return Pipeline.from_yaml(toy_pipeline_yaml(**config))


def build(repo, pipeline=None, **kwargs):
    return build_graph(
        repo, pipeline or toy_pipeline(), output_run="out", inputs=["raw", "calib"], **kwargs
    )


def regions_of(repo):
    """{(visit, detector): ConvexPolygon} from the repository's records."""
    return {
        (r["visit"], r["detector"]): ConvexPolygon.from_json(r["region"])
        for r in repo.query_dimension_records("visit_detector_region")
    }


@functools.cache
def outer_patch_polygons(tract):
    """The outer polygons of every patch of a tract, from the sky map's patch records."""
    records = SKY.dimension_records([tract])["patch"]
    return [(r["id"], ConvexPolygon.from_json(r["outer_region"])) for r in records]


@functools.cache
def tract_outer_polygons():
    return [SKY.tract(t).outer_region for t in range(SKY.num_tracts)]


def brute_patches(polygon):
    """Every (tract, patch) whose outer polygon overlaps, testing every patch of nearby tracts."""
    found = set()
    for tract, outer_tract in enumerate(tract_outer_polygons()):
        if outer_tract.overlaps(polygon):
            found |= {
                (tract, p) for p, outer in outer_patch_polygons(tract) if outer.overlaps(polygon)
            }
    return found


def test_graph_quanta_inputs_and_dependencies_match_brute_force(toy):
    graph = build(toy)
    by_label = graph.by_label()
    assert len(by_label["calibrate"]) == 24 and len(by_label["measure"]) == 24
    assert len(by_label["visitSummary"]) == 6
    regions = regions_of(toy)
    overlaps = {key: brute_patches(poly) for key, poly in regions.items()}
    expected_warps = {}
    for (visit, detector), pairs in overlaps.items():
        for tract, patch in pairs:
            expected_warps.setdefault((visit, tract, patch), set()).add(detector)
    warps = {
        (q.data_id["visit"], q.data_id["tract"], q.data_id["patch"]): q for q in by_label["warp"]
    }
    assert set(warps) == set(expected_warps)
    assert len(warps) > len(regions) // 4  # visits do spread over several patches
    calib_ids = {(q.data_id["visit"], q.data_id["detector"]): q.id for q in by_label["calibrate"]}
    for key, quantum in warps.items():
        detectors = [r.data_id["detector"] for r in quantum.inputs["calexp"]]
        assert detectors == sorted(expected_warps[key])
        assert quantum.upstream == {calib_ids[(key[0], d)] for d in detectors}
        assert quantum.data_id["skymap"] == TOY_SKYMAP.name
        assert quantum.data_id["band"] == ("g" if key[0] % 2 == 0 else "r")
    expected_coadds = {}
    for visit, tract, patch in expected_warps:
        band = "g" if visit % 2 == 0 else "r"
        expected_coadds.setdefault((tract, patch, band), set()).add(visit)
    coadds = {
        (q.data_id["tract"], q.data_id["patch"], q.data_id["band"]): q for q in by_label["coadd"]
    }
    assert set(coadds) == set(expected_coadds)
    assert any(len(v) > 1 for v in expected_coadds.values())
    for key, quantum in coadds.items():
        assert [r.data_id["visit"] for r in quantum.inputs["warps"]] == sorted(expected_coadds[key])
    # deterministic ids and predicted output refs
    q = by_label["calibrate"][0]
    assert q.id == quantum_id_for("calibrate", "out", q.data_id.subset(VD))
    ref = make_spec(graph, q).outputs["calexp"]
    assert ref.path == Repository.path_for(ref.dataset_type, ref.data_id, "out")
    assert ref.path.startswith("out/calexp/instrument=TestCam/")
    assert ref.id == toy.make_ref(ref.dataset_type, dict(q.data_id.subset(VD)), "out").id
    assert [r.dataset_type.name for r in q.inputs["bias"]] == ["bias"]
    assert q.inputs["bias"][0].data_id["detector"] == q.data_id["detector"]


def test_find_polygon_patches_against_brute_force_on_random_footprints():
    rng = np.random.default_rng(42)
    polygons = []
    while len(polygons) < 25:
        ra, dec = rng.uniform(0, 360), rng.uniform(-85, 85)
        size = rng.uniform(0.2, 4.0)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
        vertices = np.column_stack(
            [ra + size * np.cos(angles) / np.cos(np.radians(dec)), dec + size * np.sin(angles)]
        )
        try:
            polygon = ConvexPolygon.from_radec(vertices[:, 0], vertices[:, 1])
        except Exception:
            continue
        polygons.append((vertices, polygon))
    fast = find_polygon_patches(SKY, [v for v, _ in polygons])
    for (_, polygon), found in zip(polygons, fast, strict=True):
        assert set(found) == brute_patches(polygon)


def test_where_constrains_quanta_including_implied_record_and_sky_keys(toy):
    graph = build(toy, where="visit IN (1..3) AND detector != 0")
    calib = [q.data_id for q in graph.by_label()["calibrate"]]
    assert [(d["visit"], d["detector"]) for d in calib] == [
        (v, d) for v in (1, 2, 3) for d in (1, 2, 3)
    ]
    for q in graph.by_label()["warp"]:
        assert q.data_id["visit"] <= 3
        assert all(r.data_id["detector"] != 0 for r in q.inputs["calexp"])
    assert {q.data_id["band"] for q in build(toy, where="band = 'g'").by_label()["coadd"]} == {"g"}
    long = build(toy, where="visit.exposure_time > 13.5").by_label()["calibrate"]
    assert sorted({q.data_id["visit"] for q in long}) == [4, 5, 6]  # exposure time is 10 + visit

    # a tract and patch select the detectors overlapping it, for visit-level stages too
    regions = regions_of(toy)
    overlaps = {key: brute_patches(poly) for key, poly in regions.items()}
    tract, patch = max(
        {tp for pairs in overlaps.values() for tp in pairs},
        key=lambda tp: sum(tp in pairs for pairs in overlaps.values()),
    )
    graph = build(toy, where="tract = :t AND patch = :p", binds={"t": tract, "p": patch})
    selected = {(q.data_id["visit"], q.data_id["detector"]) for q in graph.by_label()["calibrate"]}
    assert selected == {key for key, pairs in overlaps.items() if (tract, patch) in pairs}
    assert 0 < len(selected) < len(regions)
    assert {(q.data_id["tract"], q.data_id["patch"]) for q in graph.by_label()["warp"]} == {
        (tract, patch)
    }
    assert [(q.data_id["tract"], q.data_id["patch"]) for q in graph.by_label()["coadd"]] == [
        (tract, patch)
    ] * len(graph.by_label()["coadd"])


def test_where_that_selects_nothing_is_an_error(toy, tmp_path):
    with pytest.raises(NothingSelectedError, match="selects no data"):
        build(toy, where="visit > 100")
    with pytest.raises(WhereSyntaxError, match="unknown identifier 'vist'"):
        build(toy, where="vist = 1")
    path = tmp_path / "toy.yaml"
    path.write_text(toy_pipeline_yaml())
    result = CliRunner().invoke(
        cli,
        [
            "run",
            toy.storage.url,
            str(path),
            "--input",
            "raw,calib",
            "--output",
            "out",
            "--where",
            "band = 'z'",
            "-j",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert "nothing to do: the where-expression \"band = 'z'\" selects no data" in result.output


def test_missing_prerequisite_is_named(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"))
    bias = repo.find_dataset("bias", instrument="TestCam", detector=2, collections="calib")
    repo.remove_datasets([bias])
    with pytest.raises(DatasetNotFoundError) as info:
        build(repo)
    message = str(info.value)
    assert (
        "stage 'calibrate': prerequisite 'bias' (bias, dimensions instrument, detector)" in message
    )
    assert "for 6 quanta, e.g. {'instrument': 'TestCam', 'detector': 2}" in message


class TwoInputs(Stage):
    dimensions = VD
    inputs = {
        "raw": Connection("rawImage", VD, "Image"),
        "mask": Connection("rawMask", VD, "Image"),
    }
    outputs = {"out": Connection("masked", VD, "Image")}

    def run(self, raw, mask):
        return {"out": raw * mask}


def test_missing_regular_input_and_unknown_dataset_type_are_named(toy):
    pipeline = Pipeline([StageDef("mask", TwoInputs, TwoInputs.config_class())])
    with pytest.raises(
        DatasetTypeError,
        match="dataset type 'rawMask' \\(input mask.mask\\) is "
        "not registered in this repository and no stage of the pipeline produces",
    ):
        build(toy, pipeline)
    toy.register_dataset_type("rawMask", VD, "Image")
    with toy.transaction():
        for visit in range(1, 7):
            for detector in range(4):
                if (visit, detector) != (4, 1):
                    toy.put(
                        np.ones((8, 8)),
                        "rawMask",
                        instrument="TestCam",
                        visit=visit,
                        detector=detector,
                        run="raw",
                    )
    with pytest.raises(DatasetNotFoundError) as info:
        build(toy, pipeline)
    assert "input 'mask' (rawMask) is missing" in str(info.value)
    assert "{'instrument': 'TestCam', 'visit': 4, 'detector': 1}" in str(info.value)
    assert len(build(toy, pipeline, where="visit != 4").quanta) == 20


def test_sky_errors_are_clear(tmp_path):
    no_map = make_toy_repo(str(tmp_path / "a"), skymap=False)
    with pytest.raises(DimensionRecordError, match="no sky map is registered"):
        build(no_map)
    assert len(build(no_map, toy_pipeline().subset("singleFrame")).quanta) == 48  # no sky needed
    no_regions = make_toy_repo(str(tmp_path / "b"), regions=False)
    with pytest.raises(MissingRegionError, match="visit 1 of instrument TestCam has no sky region"):
        build(no_regions)
    # a visit region is the fallback: every detector then gets the visit's overlaps
    polygon = ConvexPolygon.from_radec([150.0, 151.0, 151.0, 150.0], [1.5, 1.5, 2.5, 2.5])
    no_regions.insert_dimension_records(
        "visit",
        [{**r, "region": polygon.to_json()} for r in no_regions.query_dimension_records("visit")],
        update=True,
    )
    warps = build(no_regions).by_label()["warp"]
    expected = brute_patches(polygon)
    assert {(q.data_id["tract"], q.data_id["patch"]) for q in warps} == expected
    assert len(warps) == 6 * len(expected)
    assert all(len(q.inputs["calexp"]) == 4 for q in warps)


def test_dry_run_prints_the_graph_and_writes_nothing(toy, tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(toy_pipeline_yaml())
    args = [
        "run",
        toy.storage.url,
        str(path),
        "--input",
        "raw",
        "--input",
        "calib",
        "--output",
        "out",
        "--dry-run",
        "--where",
        "visit = 2",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"calibrate +4 quanta +4 to run +0 done", result.output)
    assert re.search(r"warp +4 quanta", result.output)
    assert "measure <- calibrate: 4 quantum dependencies" in result.output
    details = CliRunner().invoke(cli, [*args, "--details"])
    assert "[run] measure {'instrument': 'TestCam', 'visit': 2, 'detector': 3} <- calibrate" in (
        details.output
    )
    data = json.loads(CliRunner().invoke(cli, [*args, "--graph-format", "json"]).output)
    graph = build(toy, where="visit = 2")
    assert [q["id"] for q in data["quanta"]] == list(graph.quanta)
    assert data["stages"]["calibrate"] == {"quanta": 4, "run": 4, "skip": 0}
    assert "out" not in {c.name for c in toy.collections()}
    assert Calibrate.import_path() == "stages_toys.Calibrate"


class MakeFlat(Stage):
    """A calibration product: one per (detector, physical_filter) from every raw of that filter."""

    dimensions = ("instrument", "detector", "physical_filter")
    inputs = {"raws": Connection("rawImage", VD, "Image", multiple=True)}
    outputs = {"flat": Connection("flat", ("instrument", "detector", "physical_filter"), "Image")}

    def run(self, raws):
        return {"flat": np.mean(list(raws.values()), axis=0)}


class MakeBias(Stage):
    dimensions = ("instrument", "detector")
    inputs = {"raws": Connection("rawImage", VD, "Image", multiple=True)}
    outputs = {"combined": Connection("combinedBias", ("instrument", "detector"), "Image")}

    def run(self, raws):
        return {"combined": np.median(list(raws.values()), axis=0)}


def test_calibration_product_quanta_group_raws_by_detector_and_filter(toy):
    pipeline = Pipeline(
        [
            StageDef("flat", MakeFlat, MakeFlat.config_class()),
            StageDef("bias", MakeBias, MakeBias.config_class()),
        ]
    )
    graph = build(toy, pipeline, where="visit != 5")
    flats = graph.by_label()["flat"]
    assert [(q.data_id["physical_filter"], q.data_id["detector"]) for q in flats] == [
        (f, d) for f in ("TestCam-g", "TestCam-r") for d in range(4)
    ]
    for q in flats:
        visits = [r.data_id["visit"] for r in q.inputs["raws"]]
        parity = 0 if q.data_id["band"] == "g" else 1
        assert visits == [v for v in range(1, 7) if v % 2 == parity and v != 5]
        assert {r.data_id["detector"] for r in q.inputs["raws"]} == {q.data_id["detector"]}
    biases = graph.by_label()["bias"]
    assert [len(q.inputs["raws"]) for q in biases] == [5, 5, 5, 5]


class UsesRefcat(Stage):
    dimensions = VD
    inputs = {
        "raw": Connection("rawImage", VD, "Image"),
        "refcat": Connection(
            "refcat", ("skymap", "tract"), "Catalog", prerequisite=True, multiple=True
        ),
    }
    outputs = {"matched": Connection("matched", VD, "Catalog")}

    def run(self, raw, refcat):
        return {"matched": next(iter(refcat.values()))}


def test_spatial_prerequisites_come_from_the_overlapping_tracts(toy):
    import pyarrow as pa

    # visit 6 straddles the edge between two tracts
    visit = toy.query_dimension_records("visit", where="visit = 6")[0]
    edge = (SKY.tract(SKY.find_tract(visit["ra"], visit["dec"])).ra_range[1] + 0.1) % 360
    toy.insert_dimension_records(
        "visit_detector_region",
        [
            {
                "instrument": "TestCam",
                "visit": 6,
                "detector": d,
                "region": detector_region(edge, visit["dec"], d),
            }
            for d in range(4)
        ],
        update=True,
    )
    regions = regions_of(toy)
    tracts_of = {key: {t for t, _ in brute_patches(poly)} for key, poly in regions.items()}
    all_tracts = sorted(set().union(*tracts_of.values()))
    assert len(all_tracts) >= 2 and any(len(t) == 2 for t in tracts_of.values())
    ensure_tract_records(toy, SKY, all_tracts)
    toy.register_dataset_type("refcat", ("skymap", "tract"), "Catalog")
    for tract in all_tracts[:-1]:
        toy.put(
            pa.table({"tract": [tract]}),
            "refcat",
            skymap=TOY_SKYMAP.name,
            tract=tract,
            run="refcats",
        )
    pipeline = Pipeline([StageDef("match", UsesRefcat, UsesRefcat.config_class())])
    lacking = sum(all_tracts[-1] in tracts for tracts in tracts_of.values())
    with pytest.raises(
        DatasetNotFoundError, match=f"prerequisite 'refcat' .* for {lacking} quanta"
    ):
        build_graph(toy, pipeline, output_run="out", inputs=["raw", "refcats"])
    toy.put(
        pa.table({"tract": [all_tracts[-1]]}),
        "refcat",
        skymap=TOY_SKYMAP.name,
        tract=all_tracts[-1],
        run="refcats",
    )
    graph = build_graph(toy, pipeline, output_run="out", inputs=["raw", "refcats"])
    assert len(graph.quanta) == 24
    for q in graph.quanta.values():
        key = (q.data_id["visit"], q.data_id["detector"])
        assert [r.data_id["tract"] for r in q.inputs["refcat"]] == sorted(tracts_of[key])
