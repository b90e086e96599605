"""Dimension universe, dataId validation and normalization."""

import numpy as np
import pytest

from repo.dimensions import DataId, DimensionGroup, normalize_value, validate_data_id
from repo.errors import InvalidDataIdError


def test_groups_close_over_requires_and_implies():
    visit = DimensionGroup.from_names(["visit", "detector"])
    assert visit.required == ("instrument", "visit", "detector")
    assert visit.implied == ("band", "physical_filter", "day_obs")
    patch = DimensionGroup.from_names(["patch", "band"])
    assert patch.required == ("skymap", "tract", "patch", "band")
    assert patch.implied == ()
    # band given explicitly next to visit is still implied by the visit
    assert DimensionGroup.from_names(["visit", "band"]).required == ("instrument", "visit")


def test_normalize_values():
    assert normalize_value("visit", "12") == 12
    assert normalize_value("visit", np.int32(7)) == 7
    assert normalize_value("visit", 7.0) == 7
    assert normalize_value("band", "r") == "r"
    for bad in ("abc", 1.5, True, -1, 2**63, None, "1e3"):
        with pytest.raises(InvalidDataIdError, match="visit"):
            normalize_value("visit", bad)


@pytest.mark.parametrize(
    "value",
    ["..", "../etc", "a/b", "a\x00b", ".hidden", "x" * 65, "", "with space", "é", "a\\b", 3],
)
def test_unsafe_strings_are_refused(value):
    with pytest.raises(InvalidDataIdError, match="band"):
        normalize_value("band", value)


def test_validate_data_id_names_the_problem():
    group = DimensionGroup.from_names(["visit", "detector"])
    ok = validate_data_id({"instrument": "Cam", "visit": "3", "detector": 1}, group)
    assert ok == {"instrument": "Cam", "visit": 3, "detector": 1}
    assert list(ok) == ["instrument", "visit", "detector"]
    with pytest.raises(InvalidDataIdError, match="missing required key.*detector"):
        validate_data_id({"instrument": "Cam", "visit": 3}, group)
    with pytest.raises(InvalidDataIdError, match="unknown key 'viist'"):
        validate_data_id({"instrument": "Cam", "viist": 3, "detector": 1}, group)
    with pytest.raises(InvalidDataIdError, match="'tract' is not a dimension of"):
        validate_data_id({"instrument": "Cam", "visit": 3, "detector": 1, "tract": 0}, group)
    with pytest.raises(InvalidDataIdError, match="detector: expected an integer"):
        validate_data_id({"instrument": "Cam", "visit": 3, "detector": "S4"}, group)


def test_data_id_is_hashable_and_ordered():
    a = DataId({"visit": 1, "instrument": "Cam"})
    b = DataId({"instrument": "Cam", "visit": 1})
    assert a == b and hash(a) == hash(b)
    assert a.canonical() == "instrument=Cam,visit=1"
    assert {a: 1}[b] == 1
