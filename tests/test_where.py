"""Tests of repo.where: parsing, the SQL back end run on DuckDB, the Python back end, errors."""

from __future__ import annotations

import contextlib
import math
import random
import re

import duckdb
import numpy as np
import pytest

from repo.errors import WhereSyntaxError
from repo.where import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Bind,
    Column,
    Compare,
    Identifier,
    InList,
    Literal,
    Not,
    Or,
    Range,
    compile_where,
    evaluate_where,
    parse_where,
    referenced_identifiers,
)

COLUMNS = {
    "visit": Column('d."visit"', "int"),
    "detector": Column('d."detector"', "int"),
    "tract": Column('d."tract"', "int"),
    "band": Column('d."band"', "str"),
    "visit.exposure_time": Column('visit_rec."exposure_time"', "float"),
}
BANDS = ["g", "r", "i", "B"]
N_ROWS = 400
NAN_VISIT, NULL_VISIT, MISSING_VISIT = 5, 9, 12


def _exposure_time(visit: int) -> float | None:
    if visit == NAN_VISIT:
        return math.nan
    if visit in (NULL_VISIT, MISSING_VISIT):
        return None
    return 15.0 + (visit * 7) % 20 + 0.5


def _make_rows() -> list[dict]:
    rows = []
    for i in range(N_ROWS):
        visit = 1 + i // 10
        rows.append(
            {
                "id": i,
                "visit": visit,
                "detector": i % 10,
                "tract": i % 3,
                "band": None if i % 37 == 0 else BANDS[(i // 10) % 4],
                "visit.exposure_time": _exposure_time(visit),
            }
        )
    return rows


ROWS = _make_rows()
ALL_IDS = {row["id"] for row in ROWS}


@pytest.fixture(scope="module")
def db() -> duckdb.DuckDBPyConnection:
    """The rows as a DuckDB data table plus a visit record table joined on visit."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE data (id INTEGER, visit BIGINT, detector BIGINT, tract BIGINT, band VARCHAR)"
    )
    con.executemany(
        "INSERT INTO data VALUES (?, ?, ?, ?, ?)",
        [[r["id"], r["visit"], r["detector"], r["tract"], r["band"]] for r in ROWS],
    )
    con.execute("CREATE TABLE visit_rec (visit BIGINT, exposure_time DOUBLE)")
    visits = sorted({r["visit"] for r in ROWS} - {MISSING_VISIT})
    con.executemany("INSERT INTO visit_rec VALUES (?, ?)", [[v, _exposure_time(v)] for v in visits])
    return con


TRUSTED_TOKEN = re.compile(
    r"\s+|\(|\)|\?|,|<>|<=|>=|=|<|>|%|-|\b0\b|\b(?:AND|OR|NOT|IN|BETWEEN|TRUE|FALSE)\b"
)


def assert_only_trusted_sql(sql: str) -> None:
    """The SQL must consist of the trusted column SQL, operators, keywords and '?' only."""
    rest = sql
    for column in COLUMNS.values():
        rest = rest.replace(column.sql, " ")
    leftover = TRUSTED_TOKEN.sub("", rest)
    assert leftover == "", f"untrusted text {leftover!r} in SQL {sql!r}"


def select_sql(con: duckdb.DuckDBPyConnection, text, binds=None) -> set[int]:
    sql, params = compile_where(text, COLUMNS, binds)
    assert_only_trusted_sql(sql)
    assert sql.count("?") == len(params)
    query = (
        f"SELECT d.id FROM data AS d LEFT JOIN visit_rec ON visit_rec.visit = d.visit WHERE {sql}"
    )
    return {row[0] for row in con.execute(query, params).fetchall()}


def select_python(text, binds=None) -> set[int]:
    node = parse_where(text) if isinstance(text, str) else text
    return {row["id"] for row in ROWS if evaluate_where(node, row, binds)}


def reference(predicate) -> set[int]:
    return {row["id"] for row in ROWS if predicate(row)}


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(WhereSyntaxError) as info:
        func(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def test_parse_examples_give_the_expected_trees():
    visit, band, detector = Identifier("visit"), Identifier("band"), Identifier("detector")
    assert parse_where("visit IN (1..20) AND band = 'r' AND detector != 3") == And(
        (
            InList(visit, (Range(1, 20),)),
            Compare("=", band, Literal("r")),
            Compare("!=", detector, Literal(3)),
        )
    )
    assert parse_where("tract = 0 AND band IN ('g', 'r')") == And(
        (
            Compare("=", Identifier("tract"), Literal(0)),
            InList(band, (Literal("g"), Literal("r"))),
        )
    )
    assert parse_where("visit.exposure_time > 20 AND NOT (detector = 1 OR detector = 2)") == And(
        (
            Compare(">", Identifier("visit.exposure_time"), Literal(20)),
            Not(
                Or(
                    (
                        Compare("=", detector, Literal(1)),
                        Compare("=", detector, Literal(2)),
                    )
                )
            ),
        )
    )
    assert parse_where("band = :b AND visit IN (:visits)") == And(
        (Compare("=", band, Bind("b")), InList(visit, (Bind("visits"),)))
    )


def test_precedence_not_over_and_over_or():
    a, b, c = (Compare("=", Identifier(n), Literal(1)) for n in "abc")
    assert parse_where("a = 1 OR b = 1 AND NOT c = 1") == Or((a, And((b, Not(c)))))
    assert parse_where("NOT a = 1 AND b = 1 OR c = 1") == Or((And((Not(a), b)), c))
    assert parse_where("(a = 1 OR b = 1) AND c = 1") == And((Or((a, b)), c))
    assert parse_where("NOT NOT a = 1") == Not(Not(a))


def test_keywords_are_case_insensitive_and_identifiers_case_sensitive():
    upper = parse_where("visit NOT IN (1..3) AND NOT band = 'r' OR tract = 1")
    lower = parse_where("visit not in (1..3) and not band = 'r' or tract = 1")
    mixed = parse_where("visit Not In (1..3) aNd NoT band = 'r' Or tract = 1")
    assert upper == lower == mixed
    assert upper.operands[0].operands[0].negated is True
    message = error_of(compile_where, "Visit = 1", COLUMNS)
    assert "unknown identifier 'Visit' (did you mean 'visit'?)" in message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x = 42", 42),
        ("x = -7", -7),
        ("x = +7", 7),
        ("x = 1.5", 1.5),
        ("x = 1e3", 1000.0),
        ("x = -0.5", -0.5),
        ("x = 2.5E-2", 0.025),
        ("x = 'r'", "r"),
        ("x = 'it''s'", "it's"),
        ('x = "say ""hi"""', 'say "hi"'),
        ("x = ''", ""),
        ("x = 'a -- b /* c */ ; d'", "a -- b /* c */ ; d"),
        ("x = TRUE", True),
        ("x = false", False),
        ("x = 9223372036854775807", 2**63 - 1),
        ("x = -9223372036854775808", -(2**63)),
    ],
)
def test_literals(text, value):
    node = parse_where(text)
    assert node == Compare("=", Identifier("x"), Literal(value))
    assert type(node.right.value) is type(value)


def test_operators_literal_on_left_and_identifier_pairs():
    ops = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
    for written, stored in ops.items():
        assert parse_where(f"visit {written} 3") == Compare(stored, Identifier("visit"), Literal(3))
    assert parse_where("20<visit") == Compare("<", Literal(20), Identifier("visit"))
    assert parse_where("visit >= detector") == Compare(
        ">=", Identifier("visit"), Identifier("detector")
    )
    assert parse_where("TRUE") == Literal(True)
    assert parse_where("visit = 1 OR FALSE") == Or(
        (Compare("=", Identifier("visit"), Literal(1)), Literal(False))
    )


def test_ranges_and_mixed_in_items():
    node = parse_where("visit IN (1..20:3, 7, :x, -5..-1)")
    assert node == InList(
        Identifier("visit"), (Range(1, 20, 3), Literal(7), Bind("x"), Range(-5, -1, 1))
    )
    assert parse_where("visit NOT IN (4 .. 8)") == InList(
        Identifier("visit"), (Range(4, 8),), negated=True
    )


def test_empty_expression_means_no_constraint():
    for text in ["", "   ", "\n\t "]:
        assert parse_where(text) is None
        assert compile_where(text, COLUMNS) == ("TRUE", [])
        assert evaluate_where(text, {}) is True
    assert compile_where(None, COLUMNS) == ("TRUE", [])


def test_referenced_identifiers():
    node = parse_where(
        "visit.exposure_time > 20 AND (band IN ('g') OR NOT detector = tract) AND 3 < visit"
    )
    assert referenced_identifiers(node) == {
        "visit.exposure_time",
        "band",
        "detector",
        "tract",
        "visit",
    }
    assert referenced_identifiers(None) == set()
    assert referenced_identifiers(parse_where("TRUE")) == set()


# ---------------------------------------------------------------------------------------------
# SQL on DuckDB == Python evaluation == reference filter
# ---------------------------------------------------------------------------------------------


def _et(row):
    return row["visit.exposure_time"]


CASES = [
    (
        "visit IN (1..20) AND band = 'r' AND detector != 3",
        None,
        lambda r: 1 <= r["visit"] <= 20 and r["band"] == "r" and r["detector"] != 3,
    ),
    (
        "tract = 0 AND band IN ('g', 'r')",
        None,
        lambda r: r["tract"] == 0 and r["band"] in ("g", "r"),
    ),
    (
        # NaN sorts above every number in DuckDB, so the NaN visit counts as > 20.
        "visit.exposure_time > 20 AND NOT (detector = 1 OR detector = 2)",
        None,
        lambda r: (
            _et(r) is not None
            and (math.isnan(_et(r)) or _et(r) > 20)
            and r["detector"] not in (1, 2)
        ),
    ),
    (
        "band = :b AND visit IN (:visits)",
        {"b": "i", "visits": [3, 7, 11, 15, 99]},
        lambda r: r["band"] == "i" and r["visit"] in (3, 7, 11, 15),
    ),
    ("visit IN (3..40:5)", None, lambda r: r["visit"] in range(3, 41, 5)),
    (
        "visit NOT IN (2..30:4, 35) AND detector IN (0..9:3)",
        None,
        lambda r: r["visit"] not in [*range(2, 31, 4), 35] and r["detector"] in (0, 3, 6, 9),
    ),
    # NULL band: neither the condition nor its negation holds.
    ("NOT band = 'r'", None, lambda r: r["band"] is not None and r["band"] != "r"),
    ("band <> 'r' OR visit < 3", None, lambda r: r["visit"] < 3 or r["band"] not in (None, "r")),
    # Binary string order: 'B' < 'a' < 'g' < 'i' < 'r'.
    ("band < 'a'", None, lambda r: r["band"] == "B"),
    ("band >= 'i'", None, lambda r: r["band"] in ("i", "r")),
    ("10 >= visit AND 7 < detector", None, lambda r: r["visit"] <= 10 and r["detector"] > 7),
    ("visit <= detector", None, lambda r: r["visit"] <= r["detector"]),
    ("visit.exposure_time = visit.exposure_time", None, lambda r: _et(r) is not None),
    ("visit.exposure_time < 20.5", None, lambda r: _et(r) is not None and _et(r) < 20.5),
    ("visit = 2.0 OR visit = 3.5", None, lambda r: r["visit"] == 2),
    ("visit > :lo AND visit < :hi", {"lo": 30, "hi": 33}, lambda r: r["visit"] in (31, 32)),
    (
        "band NOT IN (:bands) AND tract != 2",
        {"bands": ("g", "B")},
        lambda r: r["band"] in ("r", "i") and r["tract"] != 2,
    ),
    ("visit IN (:none)", {"none": []}, lambda r: False),
    ("visit NOT IN (:none)", {"none": []}, lambda r: True),
    ("TRUE AND visit = 1", None, lambda r: r["visit"] == 1),
    ("FALSE OR NOT TRUE", None, lambda r: False),
    (
        "NOT (visit.exposure_time > 30 OR band IN ('g'))",
        None,
        lambda r: (
            _et(r) is not None
            and not math.isnan(_et(r))
            and _et(r) <= 30
            and r["band"] is not None
            and r["band"] != "g"
        ),
    ),
]


@pytest.mark.parametrize(("text", "binds", "predicate"), CASES)
def test_sql_and_python_select_the_reference_rows(db, text, binds, predicate):
    expected = reference(predicate)
    assert select_sql(db, text, binds) == expected
    assert select_python(text, binds) == expected


def test_cases_are_not_trivial():
    sizes = [len(reference(predicate)) for _, _, predicate in CASES]
    assert sum(0 < size < N_ROWS for size in sizes) >= len(CASES) - 3


def _random_condition(rng: random.Random, depth: int) -> str:
    if depth > 0 and rng.random() < 0.45:
        joiner = rng.choice([" AND ", " OR "])
        parts = [_random_condition(rng, depth - 1) for _ in range(rng.randint(2, 3))]
        text = "(" + joiner.join(parts) + ")"
        return f"NOT {text}" if rng.random() < 0.25 else text
    kind = rng.randrange(5)
    op = rng.choice(["=", "!=", "<>", "<", "<=", ">", ">="])
    if kind == 0:
        return f"visit {op} {rng.randint(-2, 42)}"
    if kind == 1:
        return f"band {op} '{rng.choice(BANDS + ['a', 'z'])}'"
    if kind == 2:
        return f"visit.exposure_time {op} {rng.uniform(10, 40):.2f}"
    if kind == 3:
        lo = rng.randint(0, 30)
        negate = "NOT " if rng.random() < 0.3 else ""
        return f"visit {negate}IN ({lo}..{lo + rng.randint(0, 15)}:{rng.randint(1, 4)}, 38)"
    return f"{rng.randint(0, 9)} {op} detector"


def test_random_expressions_agree_between_duckdb_and_python(db):
    rng = random.Random(20240601)
    rows_selected = []
    for _ in range(120):
        text = _random_condition(rng, 3)
        python_ids = select_python(text)
        assert select_sql(db, text) == python_ids, text
        rows_selected.append(len(python_ids))
    assert min(rows_selected) == 0 and max(rows_selected) == N_ROWS
    assert sum(0 < n < N_ROWS for n in rows_selected) > 60


# ---------------------------------------------------------------------------------------------
# Ranges and binds
# ---------------------------------------------------------------------------------------------


def test_range_compiles_to_between_and_modulo_not_a_list():
    sql, params = compile_where("visit IN (1..1000000000:7)", COLUMNS)
    assert sql == '((d."visit" BETWEEN ? AND ? AND (d."visit" - ?) % ? = 0))'
    assert params == [1, 1_000_000_000, 1, 7]
    sql, params = compile_where("visit IN (5..9)", COLUMNS)
    assert sql == '((d."visit" BETWEEN ? AND ?))'
    assert params == [5, 9]


def test_range_strides_on_duckdb(db):
    assert select_sql(db, "visit IN (3..40:5) AND detector = 0") == {
        10 * (v - 1) for v in (3, 8, 13, 18, 23, 28, 33, 38)
    }
    assert select_sql(db, "visit IN (40..40:100) AND detector = 0") == {390}
    assert select_sql(db, "detector IN (-3..9:4) AND visit = 1") == {1, 5, 9}
    row = {"visit": -1}
    assert evaluate_where("visit IN (-7..0:3)", row) is True
    assert evaluate_where("visit IN (-7..0:3)", {"visit": -2}) is False


def test_numpy_values_in_rows():
    row = {"visit": np.int64(7), "band": np.str_("r"), "visit.exposure_time": np.float64("nan")}
    assert evaluate_where("visit IN (1..9:3) AND band = 'r'", row) is True
    assert evaluate_where("visit.exposure_time > 1e300", row) is True  # NaN sorts above all
    assert evaluate_where("visit.exposure_time = visit.exposure_time", row) is True
    assert evaluate_where("visit.exposure_time < 0", row) is False
    message = error_of(evaluate_where, "visit = 1", {"visit": b"7"})
    assert "the row's value of visit has unsupported type bytes" in message


def test_scalar_and_list_binds():
    binds = {"b": "r", "visits": [1, 2, 3]}
    sql, params = compile_where("band = :b AND visit IN (:visits, 10)", COLUMNS, binds)
    assert sql == '((d."band" = ?) AND (d."visit" IN (?, ?, ?, ?)))'
    assert params == ["r", 1, 2, 3, 10]
    # Sets are ordered deterministically; ranges, tuples and numpy arrays are lists too.
    letters = list("qwertyuiopasdfghjkl")
    assert compile_where("band IN (:b)", COLUMNS, {"b": set(letters)})[1] == sorted(letters)
    assert compile_where("visit IN (:v)", COLUMNS, {"v": range(4, 7)})[1] == [4, 5, 6]
    assert compile_where("visit IN (:v)", COLUMNS, {"v": np.array([8, 9])})[1] == [8, 9]
    assert compile_where("visit IN (:v)", COLUMNS, {"v": 5})[1] == [5]
    _, params = compile_where("visit = :v", COLUMNS, {"v": np.int64(6)})
    assert params == [6] and type(params[0]) is int
    row = {"visit": 2, "band": "r"}
    assert evaluate_where("band = :b AND visit IN (:visits)", row, binds) is True
    assert evaluate_where("visit IN (:v)", row, {"v": (5, 6)}) is False


@pytest.mark.parametrize(
    ("text", "binds", "fragment"),
    [
        ("band = :b", None, "no value given for bind :b (binds given: none)"),
        ("band = :b", {"c": "r"}, "no value given for bind :b (binds given: c)"),
        ("visit = :v", {"v": [1, 2]}, "bind :v holds several values"),
        ("visit = :v", {"v": None}, "bind :v is None"),
        ("visit IN (:v)", {"v": [[1], [2]]}, "bind :v holds nested lists"),
        ("visit = :v", {"v": b"1"}, "bind :v has unsupported type bytes"),
        ("visit = :v", {"v": float("nan")}, "bind :v is not a finite number"),
        ("visit = :v", {"v": 2**70}, "bind :v does not fit in 64 bits"),
        ("band = :b", {"b": "\ud800"}, "bind :b is not valid Unicode text"),
        ("visit = :v", {"v": "abc"}, "visit is an integer dimension; got the string 'abc'"),
        ("visit IN (:v)", {"v": [1, "x"]}, "visit is an integer dimension; got the string 'x'"),
    ],
)
def test_bind_errors(text, binds, fragment):
    assert fragment in error_of(compile_where, text, COLUMNS, binds)
    row = {"visit": 1, "band": "r"}
    assert fragment in error_of(evaluate_where, text, row, binds)


# ---------------------------------------------------------------------------------------------
# Type errors and unknown identifiers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("visit = 'abc'", "visit is an integer dimension; got the string 'abc'"),
        ("'abc' < visit", "visit is an integer dimension; got the string 'abc'"),
        ("band = 3", "band is a string dimension; got the number 3"),
        ("band IN ('g', 1.5)", "band is a string dimension; got the number 1.5"),
        ("visit = TRUE", "visit is an integer dimension; got the boolean TRUE"),
        (
            "visit.exposure_time > 'long'",
            "visit.exposure_time is a floating-point field; got the string 'long'",
        ),
        ("band IN (1..3)", "ranges need an integer column; band is a string dimension"),
        (
            "visit.exposure_time IN (1..3)",
            "ranges need an integer column; visit.exposure_time is a floating-point field",
        ),
        ("band = visit", "cannot compare band (a string) with visit (an integer)"),
    ],
)
def test_type_errors(text, fragment):
    assert fragment in error_of(compile_where, text, COLUMNS)
    row = {"visit": 1, "band": "r", "visit.exposure_time": 30.0}
    assert fragment in error_of(evaluate_where, text, row)


def test_int_and_float_compare_with_each_other():
    assert compile_where("visit < 2.5", COLUMNS)[1] == [2.5]
    assert compile_where("visit.exposure_time = 20", COLUMNS)[1] == [20]
    assert compile_where("visit.exposure_time > visit", COLUMNS)[1] == []


def test_unknown_identifier_lists_the_known_ones():
    message = error_of(compile_where, "filter = 'r'", COLUMNS)
    assert message.splitlines()[0] == (
        "error at column 1: unknown identifier 'filter'; known identifiers: band, detector, "
        "tract, visit, visit.exposure_time"
    )
    message = error_of(evaluate_where, "visit = 1 AND band = 'r'", {"visit": 1})
    assert "unknown identifier 'band'; the row has: visit" in message


def test_errors_without_text_name_the_fault_in_one_line():
    node = parse_where("visit = 'abc'")
    message = error_of(compile_where, node, COLUMNS)
    assert message == "visit is an integer dimension; got the string 'abc'"


# ---------------------------------------------------------------------------------------------
# Hostile input
# ---------------------------------------------------------------------------------------------

HOSTILE = [
    ("band = 'r'; DROP TABLE x", "unexpected character ';'"),
    ("band = 'r' --", "comments ('--') are not allowed"),
    ("band = 'r' /* */", "comments ('/*') are not allowed"),
    ("/* */", "comments ('/*') are not allowed"),
    ("band = 'r", "unterminated string"),
    ('band = "r', "unterminated string"),
    ("band = 'it''s", "unterminated string"),
    ("band = 'r\x00'", "strings may not contain the character '\\x00' (U+0000)"),
    ("band = 'r'\x00", "unexpected character '\\x00' (U+0000)"),
    ("bänd = 'r'", "unexpected character 'ä' (U+00E4)"),
    ("band = 'r' AND visit = ３", "unexpected character '３' (U+FF13)"),
    ("band = 'r'\u202e", "unexpected character '\\u202e' (U+202E)"),
    ("visit IN ()", "IN (...) needs at least one value"),
    ("1..", "expected a comparison operator or IN after '1' but found '..'"),
    ("visit IN (1..)", "expected an integer after '..' but found ')'"),
    ("visit IN (1..5:)", "expected an integer stride after ':' but found ')'"),
    ("visit IN (1..5:0)", "range stride must be a positive integer; got 0"),
    ("visit IN (1..5:-2)", "range stride must be a positive integer; got -2"),
    ("visit IN (9..5)", "range 9..5 is empty"),
    ("visit IN (1.5..5)", "range bounds must be integer literals; got '1.5'"),
    ("visit IN (:a..5)", "range bounds must be integer literals; got ':a'"),
    ("visit IN (1, band)", "expected a value, bind or range but found 'band'"),
    ("visit IN 1..5", "expected '(' after IN but found '1'"),
    ("visit NOT 5", "expected IN after NOT but found '5'"),
    ("visit = 1 2", "expected AND, OR or the end of the expression but found '2'"),
    ("visit = 1)", "expected AND, OR or the end of the expression but found ')'"),
    ("(visit = 1", "expected AND, OR or ')' but found the end of the expression"),
    ("visit", "expected a comparison operator or IN after 'visit'"),
    ("visit =", "expected an identifier, value or bind but found the end of the expression"),
    ("AND visit = 1", "expected a condition but found 'AND'"),
    ("visit = 1 AND", "expected a condition but found the end of the expression"),
    ("1 = 1", "a comparison needs an identifier on at least one side"),
    ("'x' IN ('x')", "IN needs an identifier on its left, not the string 'x'"),
    ("band = :1x", "bind name '1x' is not an identifier"),
    ("band = :", "a bind is ':' followed by a name, such as :visit"),
    ("band = : b", "a bind is ':' followed by a name, such as :visit"),
    ("band = :'b'", "a bind is ':' followed by a name, such as :visit"),
    ("visit = 12abc", "malformed number '12abc'"),
    ("visit = 1.", "malformed number '1.'"),
    ("visit = 1e", "malformed number '1e'"),
    ("visit = 99999999999999999999", "integer 99999999999999999999 is out of range"),
    ("visit = " + "9" * 5000, "is out of range"),
    ("visit = 1e999", "number 1e999 is out of range"),
    ("a.b.c = 1", "an identifier has at most one '.field' part"),
    ("visit == 1", "expected an identifier, value or bind but found '='"),
    ("visit - 1", "unexpected character '-'"),
    ("visit-1", "expected a comparison operator or IN after 'visit' but found '-1'"),
    ("visit = 1 & band = 'r'", "unexpected character '&'"),
    ("(" * 10_000, "expression nests too deeply (more than 100 levels"),
    ("(" * 4990 + "visit = 1" + ")" * 4990, "expression nests too deeply"),
    ("NOT " * 2000 + "visit = 1", "expression nests too deeply"),
    ("visit = 1 OR " * 1000, "the limit is 10000"),
]


@pytest.mark.parametrize(("text", "fragment"), HOSTILE, ids=[f"{t[:30]!r}" for t, _ in HOSTILE])
def test_hostile_input_gives_a_clean_error(text, fragment):
    for call in (
        lambda: parse_where(text),
        lambda: compile_where(text, COLUMNS),
        lambda: evaluate_where(text, {"visit": 1, "band": "r"}),
    ):
        message = error_of(call)
        assert fragment in message
        assert message.startswith("syntax error")


def test_non_string_input_is_rejected():
    assert "must be a string, not bytes" in error_of(parse_where, b"visit = 1")
    assert "not int" in error_of(compile_where, 5, COLUMNS)


def test_nesting_up_to_the_limit_is_fine():
    text = "(" * MAX_DEPTH + "visit = 1" + ")" * MAX_DEPTH
    assert compile_where(text, COLUMNS) == ('(d."visit" = ?)', [1])
    assert evaluate_where(text, {"visit": 1}) is True
    assert "nests too deeply" in error_of(parse_where, "(" + text + ")")
    text = "NOT " * MAX_DEPTH + "visit = 1"
    assert evaluate_where(text, {"visit": 1}) is True  # an even number of NOTs
    assert "nests too deeply" in error_of(parse_where, "NOT " + text)


def test_depth_counts_nesting_not_sibling_groups():
    text = (
        " AND ".join(["(visit = 1)"] * (3 * MAX_DEPTH))
        + " OR "
        + " OR ".join(["NOT visit = 2"] * (3 * MAX_DEPTH))
    )
    assert evaluate_where(text, {"visit": 1}) is True
    assert len(compile_where(text, COLUMNS)[1]) == 6 * MAX_DEPTH


def test_long_flat_expression_up_to_the_length_limit(db):
    terms = [f"visit!={i}" for i in range(2000, 2000 + 600)]
    text = " AND ".join(terms)
    assert len(text) <= MAX_LENGTH
    sql, params = compile_where(text, COLUMNS)
    assert len(params) == 600
    assert select_sql(db, text) == ALL_IDS
    assert evaluate_where(text, {"visit": 2500}) is False
    assert "is 10001 characters long; the limit is 10000" in error_of(
        parse_where, text + " " * (MAX_LENGTH + 1 - len(text))
    )


def test_random_garbage_only_ever_raises_where_syntax_error():
    rng = random.Random(7)
    alphabet = list("visbandetr0123456789 ()'\",.:;=<>!-+*/%&|_\x00\n\té€") + [
        " AND ",
        " OR ",
        " NOT ",
        " IN ",
        "..",
        ":b",
    ]
    parsed = failed = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        try:
            node = parse_where(text)
        except WhereSyntaxError:
            failed += 1
            continue
        parsed += 1
        for call in (
            lambda n=node: compile_where(n, COLUMNS, {"b": 1}),
            lambda n=node: evaluate_where(n, {"visit": 1, "band": "r"}, {"b": 1}),
        ):
            with contextlib.suppress(WhereSyntaxError):
                call()
    assert failed > 2000 and parsed > 0


def test_injection_inside_a_string_stays_a_parameter(db):
    text = "band = 'r''; DROP TABLE data; --' OR band = \"x\"\" OR 1=1 --\""
    sql, params = compile_where(text, COLUMNS)
    assert sql == '((d."band" = ?) OR (d."band" = ?))'
    assert params == ["r'; DROP TABLE data; --", 'x" OR 1=1 --']
    assert select_sql(db, text) == set()
    assert db.execute("SELECT count(*) FROM data").fetchone()[0] == N_ROWS
    sql, params = compile_where("band IN (:b)", COLUMNS, {"b": ["' OR 1=1 --", "r"]})
    assert_only_trusted_sql(sql)
    assert params == ["' OR 1=1 --", "r"]


# ---------------------------------------------------------------------------------------------
# Error messages: caret position
# ---------------------------------------------------------------------------------------------


def _caret(message: str) -> tuple[int, str, str]:
    """Return (column from the message, echoed line, character above the caret)."""
    head, line, caret = message.splitlines()
    column = int(re.search(r"at column (\d+):", head).group(1))
    index = caret.index("^")
    assert caret[:index].strip() == ""
    return column, line, line[index]


def test_caret_matches_the_documented_example():
    message = error_of(parse_where, "visit IN (1..20 AND band = 'r'")
    assert message == (
        "syntax error at column 17: expected ')' or ',' but found 'AND'\n"
        "  visit IN (1..20 AND band = 'r'\n"
        "                  ^"
    )


@pytest.mark.parametrize(
    ("text", "column", "char"),
    [
        ("band = 'r'; DROP TABLE x", 11, ";"),
        ("visit = 'abc' AND band = 'r'", 9, "'"),
        ("visit = 1 AND vist = 2", 15, "v"),
        ("visit = 1 AND band = :b", 22, ":"),
        ("visit IN (1..5, 3..2)", 17, "3"),
        ("band = 'r\x00x'", 10, "?"),  # unprintable characters are shown as '?'
        ("visit =\n\t3 3", 12, "3"),
        ("x" * 3000 + " = 1 ; y", 3006, ";"),  # long text: a window around the error
        ("visit = 1 OR" + " " * 300 + ")", 313, ")"),
    ],
)
def test_caret_is_under_the_fault(text, column, char):
    message = error_of(compile_where, text, COLUMNS, {"b": 3})
    got_column, line, above = _caret(message)
    assert got_column == column
    assert above == char
    assert len(line) <= 2 + 76 + 6


def test_caret_at_end_of_expression():
    message = error_of(parse_where, "visit = ")
    head, line, caret = message.splitlines()
    assert head.startswith("syntax error at column 9: expected an identifier, value or bind")
    assert line == "  visit = "
    assert caret == "  " + " " * 8 + "^"
