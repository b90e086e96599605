"""Exact round trips of the Catalog (Parquet) and StructuredData (JSON) storage classes."""

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import MaskedColumn, Table

from repo.errors import CorruptDatasetError, FormatterError
from repo.formatters.jsonfmt import read_json, write_json
from repo.formatters.parquet import read_catalog, write_catalog


def _astropy_table():
    t = Table()
    t["id"] = np.arange(5, dtype=np.int64)
    t["flux"] = np.array([1.0, 2.5, np.nan, 1e-300, -0.0])
    t["flux"].unit = "nJy"
    t["flux"].description = "PSF flux"
    t["f32"] = np.arange(5, dtype=np.float32) / 3
    t["u8"] = np.arange(5, dtype=np.uint8)
    t["flag"] = [True, False, True, False, True]
    t["name"] = ["a", "bb", "ccc", "", "é"]
    t["vec"] = np.arange(15, dtype=np.float64).reshape(5, 3)
    t["vec"].unit = "deg"
    t["mag"] = MaskedColumn([20.0, 21.0, 22.0, 23.0, 24.0], mask=[0, 1, 0, 0, 1], unit="mag")
    t.meta["survey"] = "test"
    t.meta["version"] = 3
    return t


def test_astropy_round_trip_is_exact():
    t = _astropy_table()
    out = read_catalog(write_catalog(t), "test")
    assert isinstance(out, Table)
    assert out.colnames == t.colnames
    for name in t.colnames:
        assert out[name].dtype == t[name].dtype, name
        assert out[name].unit == t[name].unit, name
        assert out[name].description == t[name].description, name
    np.testing.assert_array_equal(out["flux"], t["flux"])  # NaN positions equal too
    assert np.signbit(out["flux"][4])
    np.testing.assert_array_equal(out["vec"], t["vec"])
    assert list(out["mag"].mask) == [False, True, False, False, True]
    assert out["mag"][0] == 20.0 and out["mag"][3] == 23.0
    assert list(out["name"]) == list(t["name"])
    assert dict(out.meta) == {"survey": "test", "version": 3}


def test_units_and_descriptions_are_in_the_parquet_schema():
    data = write_catalog(_astropy_table())
    schema = pq.read_schema(pa.BufferReader(data))
    assert schema.field("flux").metadata[b"unit"] == b"nJy"
    assert schema.field("flux").metadata[b"description"] == b"PSF flux"


def test_arrow_and_polars_round_trip():
    arrow = pa.table({"a": pa.array([1, 2, None], pa.int32()), "b": ["x", "y", "z"]})
    out = read_catalog(write_catalog(arrow), "arrow")
    assert isinstance(out, pa.Table) and out.equals(arrow)
    frame = pl.DataFrame({"a": [1.5, None, 3.0], "b": ["p", "q", None], "c": [1, 2, 3]})
    back = read_catalog(write_catalog(frame), "polars")
    assert isinstance(back, pl.DataFrame)
    assert back.equals(frame) and back.schema == frame.schema


def test_catalog_errors():
    with pytest.raises(FormatterError, match="astropy Table, pyarrow Table or polars"):
        write_catalog({"a": [1]})
    data = write_catalog(_astropy_table())
    with pytest.raises(CorruptDatasetError, match="src@42"):
        read_catalog(data[: len(data) // 2], "src@42")
    with pytest.raises(CorruptDatasetError, match="garbage"):
        read_catalog(b"not parquet at all", "garbage")


def test_json_round_trip_and_errors():
    obj = {"a": 0.1 + 0.2, "b": [1, 2, {"c": None, "d": True}], "e": "ünï", "f": 1e-300}
    assert read_json(write_json(obj), "x") == obj
    with pytest.raises(FormatterError, match="nan"):
        write_json({"x": float("nan")})
    with pytest.raises(FormatterError, match="JSON-serializable"):
        write_json({"x": object()})
    with pytest.raises(CorruptDatasetError, match="summary.json"):
        read_json(b"{not json", "summary.json")
