"""Registering a sky map in a repository and the `drp skymap` commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from stages_toys import make_toy_repo

from cli.main import cli
from repo.errors import DimensionRecordError
from repo.regions import Circle, ConvexPolygon
from repo.skymap import RingsSkyMap, SkyMapConfig
from stages.framework.skymap_setup import load_skymap, register_skymap

TEST_MAP = RingsSkyMap(SkyMapConfig.test())


def brute(region):
    """(tract, patch) pairs whose outer polygons overlap a region, patch by patch."""
    found = set()
    for tract in TEST_MAP.find_tracts(region):
        for record in TEST_MAP.dimension_records([tract])["patch"]:
            if ConvexPolygon.from_json(record["outer_region"]).overlaps(region):
                found.add((tract, record["id"]))
    return found


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    return result


@pytest.fixture
def repo(tmp_path):
    return make_toy_repo(str(tmp_path / "repo"), n_visits=3, skymap=False)


def detector_polygons(repo):
    return {
        (r["visit"], r["detector"]): ConvexPolygon.from_json(r["region"])
        for r in repo.query_dimension_records("visit_detector_region")
    }


def test_register_writes_records_for_the_visited_tracts(repo):
    url = repo.storage.url
    result = invoke("skymap", url, "register", "--preset", "test", "--tracts", "0")
    assert result.exit_code == 0, result.output
    visited = {t for poly in detector_polygons(repo).values() for t, _ in brute(poly)}
    tracts = {r["id"] for r in repo.query_dimension_records("tract")}
    assert tracts == visited | {0}
    patches = repo.query_dimension_records("patch")
    expected = sum(
        TEST_MAP.tract(t).num_patches[0] * TEST_MAP.tract(t).num_patches[1] for t in tracts
    )
    assert len(patches) == expected
    assert f"records for {len(tracts)} tract(s)" in result.output
    again = invoke("skymap", url, "register", "--preset", "test")
    assert again.exit_code == 0 and "0 new tract and 0 new patch records" in again.output
    clash = invoke("skymap", url, "register", "--preset", "default", "--name", "test_rings")
    assert clash.exit_code == 1
    assert "a different sky map is already registered as 'test_rings'" in clash.output
    assert load_skymap(repo).config == SkyMapConfig.test()


def test_show_and_find(repo):
    url = repo.storage.url
    register_skymap(repo, SkyMapConfig.test())
    shown = json.loads(invoke("skymap", url, "show", "--format", "json").output)[0]
    assert (shown["name"], shown["tracts"]) == ("test_rings", TEST_MAP.num_tracts)
    assert shown["hash"] == SkyMapConfig.test().hash
    tract = TEST_MAP.find_tract(150.5, 2.0)
    info = json.loads(
        invoke("skymap", url, "show", "--tract", str(tract), "--format", "json").output
    )[0]
    assert info["crval"] == list(TEST_MAP.tract(tract).wcs.wcs.crval)
    patch = TEST_MAP.find_patch(tract, 150.5, 2.0)
    patch_info = json.loads(
        invoke(
            "skymap", url, "show", "--tract", str(tract), "--patch", str(patch), "--format", "json"
        ).output
    )[0]
    assert tuple(patch_info["bbox"]) == TEST_MAP.patch(tract, patch).bbox

    def find(*args):
        result = invoke("skymap", url, "find", *args, "--format", "json")
        assert result.exit_code == 0, result.output
        return {(row["tract"], row["patch"]) for row in json.loads(result.output)}

    assert find("--ra", "150.5", "--dec", "2.0") == {(tract, patch)}
    assert find("--ra", "150.5", "--dec", "2.0", "--radius", "2.5") == brute(
        Circle(150.5, 2.0, 2.5)
    )
    vertices = [[149.0, 1.0], [152.0, 1.0], [152.0, 3.5], [149.0, 3.5]]
    polygon = ConvexPolygon.from_json(vertices)
    assert find("--region", json.dumps(vertices)) == brute(polygon)
    polygons = detector_polygons(repo)
    assert find("--visit", "2", "--detector", "3") == brute(polygons[(2, 3)])
    assert find("--visit", "2") == set().union(*(brute(polygons[(2, d)]) for d in range(4)))
    bad = invoke("skymap", url, "find", "--ra", "1")
    assert bad.exit_code == 2 and "--ra and --dec go together" in bad.output
    assert invoke("skymap", url, "find", "--ra", "1", "--dec", "2", "--visit", "1").exit_code == 2


def test_choosing_among_several_sky_maps(repo):
    with pytest.raises(DimensionRecordError, match="no sky map is registered"):
        load_skymap(repo)
    register_skymap(repo, SkyMapConfig.test(), for_visits=False)
    register_skymap(repo, SkyMapConfig.test("other_rings"), for_visits=False)
    with pytest.raises(DimensionRecordError, match="several sky maps are registered"):
        load_skymap(repo)
    assert load_skymap(repo, "other_rings").name == "other_rings"
    with pytest.raises(DimensionRecordError, match="no sky map 'nope'"):
        load_skymap(repo, "nope")
