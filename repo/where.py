"""The where-expression language that users write to select dataIds.

Users narrow a query with expressions such as::

    visit IN (1..20) AND band = 'r' AND detector != 3
    tract = 0 AND band IN ('g', 'r')
    visit.exposure_time > 20 AND NOT (detector = 1 OR detector = 2)
    band = :b AND visit IN (:visits)

The repository runs these against DuckDB tables, and user text must never be pasted into SQL. This
module therefore tokenizes and parses the text by hand into a small tree of frozen dataclasses and
offers two back ends for that tree:

* :func:`compile_where` turns it into an SQL fragment in which every column is a trusted SQL
  expression chosen by our own code (a :class:`Column`) and every value is a ``?`` placeholder,
  with the values in a separate parameter list;
* :func:`evaluate_where` evaluates it in pure Python against one row (a dict), with the same
  semantics as the SQL (three-valued logic for NULL/None, NaN sorting above every number as in
  DuckDB), for filtering in memory.

:func:`referenced_identifiers` tells callers which identifiers an expression uses, so that they know
which dimension-record tables to join.

Grammar (EBNF; keywords are case-insensitive, identifiers case-sensitive)::

    expression  = [ or_expr ] ;                      (* empty text means "no constraint" *)
    or_expr     = and_expr { "OR" and_expr } ;
    and_expr    = not_expr { "AND" not_expr } ;
    not_expr    = "NOT" not_expr | predicate ;
    predicate   = "(" or_expr ")"
                | operand compare_op operand         (* at least one side an identifier *)
                | identifier [ "NOT" ] "IN" "(" in_item { "," in_item } ")"
                | "TRUE" | "FALSE" ;
    compare_op  = "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=" ;
    operand     = identifier | literal | bind ;
    in_item     = range | literal | bind ;           (* a bind here may hold a list of values *)
    range       = integer ".." integer [ ":" integer ] ;   (* inclusive; optional positive stride *)
    literal     = integer | float | string | "TRUE" | "FALSE" ;
    identifier  = name [ "." name ] ;                (* e.g. visit or visit.exposure_time *)
    bind        = ":" name ;
    name        = letter_ { letter_ | digit } ;      (* ASCII letters, digits and "_" *)
    integer     = [ "+" | "-" ] digit { digit } ;    (* must fit in a signed 64-bit integer *)
    float       = integer ( "." digit { digit } [ exponent ] | exponent ) ;
    exponent    = ( "e" | "E" ) [ "+" | "-" ] digit { digit } ;
    string      = "'" { char | "''" } "'" | '"' { char | '""' } '"' ;

``NOT`` binds tighter than ``AND``, which binds tighter than ``OR``. A range ``a..b:s`` selects
``a, a+s, a+2s, ...`` up to ``b`` and compiles to ``BETWEEN`` plus a modulo test, never to a list.

Every problem with an expression (syntax, unknown identifier, type mismatch, missing bind) raises
:class:`~repo.errors.WhereSyntaxError` whose message names the fault and, when the text is known,
shows the expression with a caret under the column at fault::

    syntax error at column 17: expected ')' or ',' but found 'AND'
      visit IN (1..20 AND band = 'r'
                      ^

Hostile input (SQL fragments, comments, NUL bytes, non-ASCII text, deeply nested parentheses, very
long text) gets the same clean error: input is limited to :data:`MAX_LENGTH` characters and
:data:`MAX_DEPTH` levels of nesting, so parsing never hits Python's recursion limit.
"""

from __future__ import annotations

import difflib
import math
import numbers
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import WhereSyntaxError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "And",
    "Bind",
    "Column",
    "Compare",
    "Identifier",
    "InList",
    "Literal",
    "Node",
    "Not",
    "Or",
    "Range",
    "compile_where",
    "evaluate_where",
    "parse_where",
    "referenced_identifiers",
]

#: Longest expression accepted, in characters.
MAX_LENGTH = 10_000
#: Deepest nesting of parentheses and ``NOT`` accepted.
MAX_DEPTH = 100

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "TRUE", "FALSE"})
_COMPARE_OPS = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})
_DIGITS = frozenset("0123456789")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | _DIGITS
_WHITESPACE = frozenset(" \t\r\n")
_DTYPES = ("int", "float", "str", "bool")
_DTYPE_WORDS = {
    "int": "an integer",
    "float": "a floating-point",
    "str": "a string",
    "bool": "a boolean",
}
# Types that may be compared with each other: int and float are both numbers.
_FAMILY = {"int": "number", "float": "number", "str": "string", "bool": "boolean"}
_LIST_TYPES = (list, tuple, set, frozenset, range, np.ndarray)


# ---------------------------------------------------------------------------------------------
# The syntax tree
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    """Base of the syntax-tree nodes: ``pos`` is the 0-based offset of the node in the text.

    ``pos`` takes no part in equality, so a tree built by hand compares equal to a parsed one.
    """

    pos: int = field(default=0, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True)
class Identifier(_Node):
    """A dimension or record field, e.g. ``visit`` or ``visit.exposure_time``."""

    name: str


@dataclass(frozen=True)
class Literal(_Node):
    """A literal value: ``int``, ``float``, ``str`` or ``bool``.

    A boolean literal standing alone is also a condition (``TRUE`` or ``FALSE``).
    """

    value: int | float | str | bool


@dataclass(frozen=True)
class Bind(_Node):
    """A named placeholder ``:name`` whose value is supplied separately."""

    name: str


@dataclass(frozen=True)
class Range(_Node):
    """The inclusive integer range ``start..stop:stride`` (only inside ``IN``)."""

    start: int
    stop: int
    stride: int = 1


@dataclass(frozen=True)
class Compare(_Node):
    """A comparison; ``op`` is one of ``= != < <= > >=`` (``<>`` is stored as ``!=``)."""

    op: str
    left: Identifier | Literal | Bind
    right: Identifier | Literal | Bind


@dataclass(frozen=True)
class InList(_Node):
    """``identifier [NOT] IN (item, ...)``, each item a literal, a bind or a range."""

    identifier: Identifier
    items: tuple[Literal | Bind | Range, ...]
    negated: bool = False


@dataclass(frozen=True)
class Not(_Node):
    """Logical negation of a condition."""

    operand: Node


@dataclass(frozen=True)
class And(_Node):
    """Conjunction of two or more conditions."""

    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or(_Node):
    """Disjunction of two or more conditions."""

    operands: tuple[Node, ...]


Node = Identifier | Literal | Bind | Range | Compare | InList | Not | And | Or
_NODE_TYPES = (Identifier, Literal, Bind, Range, Compare, InList, Not, And, Or)


@dataclass(frozen=True)
class Column:
    """A column an identifier maps to when compiling to SQL.

    Parameters
    ----------
    sql : str
        Trusted SQL expression chosen by our own code, e.g. ``'d."visit"'``; never user text.
    dtype : str
        ``'int'``, ``'float'``, ``'str'`` or ``'bool'``; values compared with the column are
        checked against it.
    """

    sql: str
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"Column dtype must be one of {', '.join(_DTYPES)}; got {self.dtype!r}"
            )


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class _PositionedError(Exception):
    """Internal error carrying the offset at fault; the public functions format it."""

    def __init__(self, message: str, pos: int, kind: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.kind = kind


def _format_error(error: _PositionedError, text: str | None) -> WhereSyntaxError:
    """Build the user-facing error: message, then the expression and a caret if text is known."""
    if text is None:
        return WhereSyntaxError(error.message)
    line, caret = _excerpt(text, error.pos)
    head = f"{error.kind} at column {error.pos + 1}: {error.message}"
    return WhereSyntaxError(f"{head}\n  {line}\n  {' ' * caret}^")


def _excerpt(text: str, pos: int, width: int = 76) -> tuple[str, int]:
    """Return a one-line, printable window of ``text`` around ``pos`` and the caret offset in it.

    Whitespace becomes a space and unprintable characters become ``?``, one for one, so that the
    caret stays under the character at fault.
    """
    start = 0
    if len(text) > width:
        start = min(max(0, pos - width // 2), max(0, len(text) - width))
    window = text[start : start + width]
    shown = "".join(
        " " if ch in _WHITESPACE else (ch if ch.isprintable() else "?") for ch in window
    )
    caret = pos - start
    if start > 0:
        shown, caret = "..." + shown, caret + 3
    if start + width < len(text):
        shown += "..."
    return shown, caret


def _describe_char(ch: str) -> str:
    """Name a character for an error message, with its code point when it is not plain ASCII."""
    if " " < ch <= "~":
        return f"'{ch}'"
    return f"{ch!r} (U+{ord(ch):04X})"


def _quote(value: str, limit: int = 40) -> str:
    """Quote a string the way it is written in an expression, shortened if very long."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return "'" + shown.replace("'", "''") + "'"


def _describe_value(value: object) -> str:
    """Name a value for an error message: ``the string 'abc'``, ``the number 3``."""
    if isinstance(value, str):
        return f"the string {_quote(value)}"
    if isinstance(value, bool | np.bool_):
        return f"the boolean {'TRUE' if value else 'FALSE'}"
    if isinstance(value, numbers.Number):
        return f"the number {value!r}"
    return f"a value of type {type(value).__name__}"


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    """One token: ``kind`` is ident, keyword, number, string, bind, op or eof."""

    kind: str
    value: object
    pos: int
    text: str

    def is_op(self, *ops: str) -> bool:
        return self.kind == "op" and self.value in ops

    def is_keyword(self, *words: str) -> bool:
        return self.kind == "keyword" and self.value in words

    def describe(self) -> str:
        if self.kind == "eof":
            return "the end of the expression"
        if self.kind == "string":
            return f"the string {_quote(str(self.value), 20)}"
        shown = self.text if len(self.text) <= 30 else self.text[:30] + "..."
        return f"'{shown}'"


class _Lexer:
    """Scan an expression into tokens on demand, so errors are reported in source order."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._peeked: _Token | None = None

    def peek(self) -> _Token:
        if self._peeked is None:
            self._peeked = self._scan()
        return self._peeked

    def next(self) -> _Token:
        token = self.peek()
        self._peeked = None
        return token

    def _char(self, offset: int = 0) -> str:
        """The character at ``pos + offset``, or '' past the end."""
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def _scan(self) -> _Token:
        text = self.text
        while self.pos < len(text) and text[self.pos] in _WHITESPACE:
            self.pos += 1
        start = self.pos
        ch, nxt = self._char(), self._char(1)
        if not ch:
            return _Token("eof", None, start, "")
        if ch in _NAME_START:
            return self._identifier()
        if ch in _DIGITS or (ch in "+-" and nxt in _DIGITS):
            return self._number()
        if ch in "'\"":
            return self._string()
        if ch == ":":
            return self._bind_or_colon()
        if ch + nxt in ("--", "/*"):
            raise _PositionedError(
                f"comments ('{ch + nxt}') are not allowed", start, "syntax error"
            )
        for op in ("..", "<=", ">=", "!=", "<>", "=", "<", ">", "(", ")", ","):
            if text.startswith(op, start):
                self.pos += len(op)
                return _Token("op", op, start, op)
        raise _PositionedError(f"unexpected character {_describe_char(ch)}", start, "syntax error")

    def _name(self) -> str:
        start = self.pos
        while self._char() and self._char() in _NAME_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def _identifier(self) -> _Token:
        start = self.pos
        name = self._name()
        if self._char() == "." and self._char(1) in _NAME_START:
            self.pos += 1
            name += "." + self._name()
            if self._char() == "." and self._char(1) in _NAME_START:
                raise _PositionedError(
                    "an identifier has at most one '.field' part", self.pos, "syntax error"
                )
            return _Token("ident", name, start, name)
        if name.upper() in _KEYWORDS:
            return _Token("keyword", name.upper(), start, name)
        return _Token("ident", name, start, name)

    def _digits(self) -> None:
        while self._char() and self._char() in _DIGITS:
            self.pos += 1

    def _number(self) -> _Token:
        start = self.pos
        if self._char() in "+-":
            self.pos += 1
        self._digits()
        is_float = False
        if self._char() == "." and self._char(1) in _DIGITS:
            self.pos += 1
            self._digits()
            is_float = True
        if self._char() and self._char() in "eE":
            self.pos += 1
            if self._char() and self._char() in "+-":
                self.pos += 1
            if not (self._char() and self._char() in _DIGITS):
                self._malformed_number(start)
            self._digits()
            is_float = True
        if (self._char() and self._char() in _NAME_CHARS) or (
            self._char() == "." and self._char(1) != "."
        ):
            self._malformed_number(start)
        text = self.text[start : self.pos]
        return _Token("number", self._number_value(text, is_float, start), start, text)

    def _malformed_number(self, start: int) -> None:
        end = self.pos
        while end < len(self.text) and (self.text[end] in _NAME_CHARS or self.text[end] == "."):
            end += 1
        shown = self.text[start:end][:30]
        raise _PositionedError(f"malformed number '{shown}'", start, "syntax error")

    @staticmethod
    def _number_value(text: str, is_float: bool, start: int) -> int | float:
        if is_float:
            value = float(text)
            if not math.isfinite(value):
                raise _PositionedError(f"number {text[:30]} is out of range", start, "syntax error")
            return value
        # Check the length first: int() refuses strings of more than a few thousand digits.
        if len(text.lstrip("+-")) > 19 or not _INT64_MIN <= int(text) <= _INT64_MAX:
            raise _PositionedError(
                f"integer {text[:30]} is out of range (64-bit signed integers only)",
                start,
                "syntax error",
            )
        return int(text)

    def _string(self) -> _Token:
        start = self.pos
        quote = self._char()
        self.pos += 1
        chars: list[str] = []
        while True:
            ch = self._char()
            if not ch:
                raise _PositionedError(
                    f"unterminated string: no closing {quote} for the string starting here",
                    start,
                    "syntax error",
                )
            if ch == quote:
                if self._char(1) == quote:
                    chars.append(quote)
                    self.pos += 2
                    continue
                self.pos += 1
                break
            if not ch.isprintable():
                raise _PositionedError(
                    f"strings may not contain the character {_describe_char(ch)}",
                    self.pos,
                    "syntax error",
                )
            chars.append(ch)
            self.pos += 1
        return _Token("string", "".join(chars), start, self.text[start : self.pos])

    def _bind_or_colon(self) -> _Token:
        start = self.pos
        self.pos += 1
        if self._char() and self._char() in _NAME_START:
            name = self._name()
            return _Token("bind", name, start, ":" + name)
        if self._char() and self._char() in _DIGITS:
            word_start = self.pos
            word = self._name()
            if not set(word) <= _DIGITS:
                raise _PositionedError(
                    f"bind name '{word[:30]}' is not an identifier (use letters, digits and '_', "
                    "starting with a letter)",
                    word_start,
                    "syntax error",
                )
            self.pos = word_start  # a stride: the digits are scanned as the next token
        return _Token("op", ":", start, ":")


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


class _Parser:
    """Recursive-descent parser for the grammar in the module docstring."""

    def __init__(self, text: str) -> None:
        self.lexer = _Lexer(text)
        self.depth = 0

    def parse(self) -> Node:
        node = self._or()
        token = self.lexer.peek()
        if token.kind != "eof":
            raise self._error(
                token, f"expected AND, OR or the end of the expression but found {token.describe()}"
            )
        return node

    @staticmethod
    def _error(token: _Token, message: str) -> _PositionedError:
        return _PositionedError(message, token.pos, "syntax error")

    def _enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._error(
                token,
                f"expression nests too deeply (more than {MAX_DEPTH} levels of parentheses or NOT)",
            )

    def _or(self) -> Node:
        operands = [self._and()]
        while self.lexer.peek().is_keyword("OR"):
            self.lexer.next()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands), pos=operands[0].pos)

    def _and(self) -> Node:
        operands = [self._not()]
        while self.lexer.peek().is_keyword("AND"):
            self.lexer.next()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else And(tuple(operands), pos=operands[0].pos)

    def _not(self) -> Node:
        token = self.lexer.peek()
        if not token.is_keyword("NOT"):
            return self._predicate()
        self.lexer.next()
        self._enter(token)
        operand = self._not()
        self.depth -= 1
        return Not(operand, pos=token.pos)

    def _predicate(self) -> Node:
        token = self.lexer.peek()
        if token.is_op("("):
            self.lexer.next()
            self._enter(token)
            node = self._or()
            closing = self.lexer.next()
            if not closing.is_op(")"):
                raise self._error(
                    closing, f"expected AND, OR or ')' but found {closing.describe()}"
                )
            self.depth -= 1
            return node
        left_token = token
        left = self._operand("a condition")
        token = self.lexer.peek()
        if token.kind == "op" and token.value in _COMPARE_OPS:
            self.lexer.next()
            right = self._operand("an identifier, value or bind")
            if not isinstance(left, Identifier) and not isinstance(right, Identifier):
                raise _PositionedError(
                    "a comparison needs an identifier on at least one side",
                    left.pos,
                    "syntax error",
                )
            op = "!=" if token.value == "<>" else str(token.value)
            return Compare(op, left, right, pos=left.pos)
        if token.is_keyword("NOT", "IN"):
            if not isinstance(left, Identifier):
                raise self._error(
                    token, f"IN needs an identifier on its left, not {left_token.describe()}"
                )
            return self._in_list(left)
        if isinstance(left, Literal) and isinstance(left.value, bool):
            return left
        raise self._error(
            token,
            f"expected a comparison operator or IN after {left_token.describe()} but found "
            f"{token.describe()}",
        )

    def _operand(self, expected: str) -> Identifier | Literal | Bind:
        token = self.lexer.next()
        if token.kind == "ident":
            return Identifier(str(token.value), pos=token.pos)
        if token.kind in ("number", "string"):
            return Literal(token.value, pos=token.pos)  # type: ignore[arg-type]
        if token.is_keyword("TRUE", "FALSE"):
            return Literal(token.value == "TRUE", pos=token.pos)
        if token.kind == "bind":
            return Bind(str(token.value), pos=token.pos)
        if token.is_op(":"):
            raise self._error(token, "a bind is ':' followed by a name, such as :visit")
        raise self._error(token, f"expected {expected} but found {token.describe()}")

    def _in_list(self, identifier: Identifier) -> InList:
        negated = False
        token = self.lexer.next()
        if token.is_keyword("NOT"):
            negated = True
            token = self.lexer.next()
            if not token.is_keyword("IN"):
                raise self._error(token, f"expected IN after NOT but found {token.describe()}")
        opening = self.lexer.next()
        if not opening.is_op("("):
            raise self._error(opening, f"expected '(' after IN but found {opening.describe()}")
        if self.lexer.peek().is_op(")"):
            raise self._error(self.lexer.peek(), "IN (...) needs at least one value")
        items: list[Literal | Bind | Range] = []
        while True:
            items.append(self._in_item())
            token = self.lexer.next()
            if token.is_op(")"):
                break
            if not token.is_op(","):
                raise self._error(token, f"expected ')' or ',' but found {token.describe()}")
        return InList(identifier, tuple(items), negated, pos=identifier.pos)

    def _in_item(self) -> Literal | Bind | Range:
        token = self.lexer.peek()
        item = self._operand("a value, bind or range")
        if isinstance(item, Identifier):
            raise self._error(
                token, f"expected a value, bind or range but found {token.describe()}"
            )
        if not self.lexer.peek().is_op(".."):
            return item  # type: ignore[return-value]
        if not isinstance(item, Literal) or type(item.value) is not int:
            raise self._error(
                token, f"range bounds must be integer literals; got {token.describe()}"
            )
        self.lexer.next()
        stop = self._range_integer("after '..'")
        stride = 1
        if self.lexer.peek().is_op(":"):
            self.lexer.next()
            stride_token = self.lexer.peek()
            stride = self._range_integer("stride after ':'")
            if stride <= 0:
                raise self._error(
                    stride_token, f"range stride must be a positive integer; got {stride}"
                )
        start = int(item.value)  # type: ignore[union-attr]
        if start > stop:
            raise self._error(token, f"range {start}..{stop} is empty: its start is after its end")
        if stop - start > _INT64_MAX:
            raise self._error(token, f"range {start}..{stop} spans more than 2**63 values")
        return Range(start, stop, stride, pos=token.pos)

    def _range_integer(self, where: str) -> int:
        token = self.lexer.next()
        if token.kind != "number" or type(token.value) is not int:
            raise self._error(token, f"expected an integer {where} but found {token.describe()}")
        return int(token.value)  # type: ignore[arg-type]


def parse_where(text: str) -> Node | None:
    """Parse a where-expression into its syntax tree.

    Parameters
    ----------
    text : str
        The expression, e.g. ``"visit IN (1..20) AND band = 'r'"``.

    Returns
    -------
    Node or None
        The root of the tree; ``None`` for an empty or whitespace-only expression.

    Raises
    ------
    WhereSyntaxError
        If the text is not a valid expression, is longer than :data:`MAX_LENGTH` characters or
        nests deeper than :data:`MAX_DEPTH` levels.
    """
    if not isinstance(text, str):
        raise WhereSyntaxError(f"a where-expression must be a string, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise WhereSyntaxError(
            f"syntax error: the expression is {len(text)} characters long; "
            f"the limit is {MAX_LENGTH}"
        )
    if not text.strip(" \t\r\n"):
        return None
    try:
        return _Parser(text).parse()
    except _PositionedError as error:
        raise _format_error(error, text) from None


def _as_node(text_or_node: str | Node | None) -> tuple[Node | None, str | None]:
    """Return (tree, source text or None) for the argument of the public back ends."""
    if text_or_node is None:
        return None, None
    if isinstance(text_or_node, str):
        return parse_where(text_or_node), text_or_node
    if isinstance(text_or_node, _NODE_TYPES):
        return text_or_node, None
    raise WhereSyntaxError(
        f"expected a where-expression string or a parsed expression, not "
        f"{type(text_or_node).__name__}"
    )


def referenced_identifiers(node: Node | None) -> set[str]:
    """Return the identifiers an expression uses.

    Parameters
    ----------
    node : Node or None
        A tree from :func:`parse_where`.

    Returns
    -------
    set of str
        E.g. ``{'visit', 'band', 'visit.exposure_time'}``, so that callers know which
        dimension-record tables to join; empty for ``None``.
    """
    found: set[str] = set()
    for child in _walk(node):
        if isinstance(child, Identifier):
            found.add(child.name)
    return found


def _walk(node: Node | None) -> Iterator[Node]:
    """Yield every node of the tree, depth first."""
    if node is None:
        return
    yield node
    if isinstance(node, And | Or):
        for operand in node.operands:
            yield from _walk(operand)
    elif isinstance(node, Not):
        yield from _walk(node.operand)
    elif isinstance(node, Compare):
        yield node.left
        yield node.right
    elif isinstance(node, InList):
        yield node.identifier
        yield from node.items


# ---------------------------------------------------------------------------------------------
# Values, binds and types (shared by both back ends)
# ---------------------------------------------------------------------------------------------


def _value_type(value: object) -> str | None:
    """The dtype of a Python value ('int', 'float', 'str', 'bool'), or None if unsupported."""
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    return None


def _normalized(value: object, dtype: str) -> int | float | str | bool:
    """Convert numpy scalars and the like to the plain Python type of ``dtype``."""
    converters: dict[str, Callable[[object], int | float | str | bool]] = {
        "int": int,  # type: ignore[dict-item]
        "float": float,  # type: ignore[dict-item]
        "str": str,
        "bool": bool,
    }
    return converters[dtype](value)


def _mismatch(name: str, dtype: str, value: object, pos: int) -> _PositionedError:
    kind = "field" if "." in name else "dimension"
    return _PositionedError(
        f"{name} is {_DTYPE_WORDS[dtype]} {kind}; got {_describe_value(value)}", pos
    )


def _checked(name: str, dtype: str, value: object, pos: int) -> int | float | str | bool:
    """Check that ``value`` may be compared with ``name`` of type ``dtype``; return it plain."""
    value_type = _value_type(value)
    if value_type is None or _FAMILY[value_type] != _FAMILY[dtype]:
        raise _mismatch(name, dtype, value, pos)
    return _normalized(value, value_type)


class _Binds:
    """Resolve ``:name`` placeholders against the mapping the caller supplied."""

    def __init__(self, binds: Mapping[str, object] | None) -> None:
        self.binds = dict(binds or {})

    def _lookup(self, bind: Bind) -> object:
        if bind.name not in self.binds:
            given = ", ".join(sorted(self.binds)) or "none"
            raise _PositionedError(
                f"no value given for bind :{bind.name} (binds given: {given})", bind.pos
            )
        return self.binds[bind.name]

    def scalar(self, bind: Bind) -> object:
        """The value of a bind that must hold one value."""
        value = self._lookup(bind)
        if isinstance(value, _LIST_TYPES):
            raise _PositionedError(
                f"bind :{bind.name} holds several values; that is only allowed inside IN (...)",
                bind.pos,
            )
        return self._valid(bind, value)

    def values(self, bind: Bind) -> list[object]:
        """The values of a bind inside ``IN``: a list/tuple/set/range/array, or one value."""
        value = self._lookup(bind)
        if not isinstance(value, _LIST_TYPES):
            return [self._valid(bind, value)]
        items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        if isinstance(value, set | frozenset):
            items.sort(key=repr)  # deterministic SQL text for the same set
        for item in items:
            if isinstance(item, _LIST_TYPES):
                raise _PositionedError(f"bind :{bind.name} holds nested lists", bind.pos)
        return [self._valid(bind, item) for item in items]

    @staticmethod
    def _valid(bind: Bind, value: object) -> object:
        value_type = _value_type(value)
        if value is None:
            raise _PositionedError(
                f"bind :{bind.name} is None; NULL cannot be compared with '='", bind.pos
            )
        if value_type is None:
            raise _PositionedError(
                f"bind :{bind.name} has unsupported type {type(value).__name__} "
                "(use int, float, str or bool)",
                bind.pos,
            )
        if value_type == "float" and not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise _PositionedError(f"bind :{bind.name} is not a finite number", bind.pos)
        if value_type == "int" and not _INT64_MIN <= int(value) <= _INT64_MAX:  # type: ignore[call-overload]
            raise _PositionedError(f"bind :{bind.name} does not fit in 64 bits", bind.pos)
        if value_type == "str":
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError:
                raise _PositionedError(
                    f"bind :{bind.name} is not valid Unicode text", bind.pos
                ) from None
        return value


def _operand_value(operand: Literal | Bind, binds: _Binds) -> object:
    return operand.value if isinstance(operand, Literal) else binds.scalar(operand)


def _item_values(item: Literal | Bind, binds: _Binds) -> list[object]:
    return [item.value] if isinstance(item, Literal) else binds.values(item)


def _not_a_condition(node: Node) -> _PositionedError:
    return _PositionedError(f"{type(node).__name__} is not a condition", node.pos)


# ---------------------------------------------------------------------------------------------
# SQL back end
# ---------------------------------------------------------------------------------------------

_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class _SqlCompiler:
    """Turn a tree into SQL text made of trusted column SQL, operators and ``?`` placeholders."""

    def __init__(self, columns: Mapping[str, Column], binds: _Binds) -> None:
        self.columns = columns
        self.binds = binds
        self.params: list[object] = []

    def column(self, identifier: Identifier) -> Column:
        if identifier.name in self.columns:
            return self.columns[identifier.name]
        raise _unknown_identifier(identifier, self.columns, "known identifiers")

    def condition(self, node: Node) -> str:
        if isinstance(node, And | Or):
            joiner = " AND " if isinstance(node, And) else " OR "
            return "(" + joiner.join(self.condition(operand) for operand in node.operands) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.condition(node.operand)})"
        if isinstance(node, Literal) and isinstance(node.value, bool):
            return "TRUE" if node.value else "FALSE"
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, InList):
            return self.in_list(node)
        raise _not_a_condition(node)

    def compare(self, node: Compare) -> str:
        op = _SQL_OPS[node.op]
        left, right = node.left, node.right
        if isinstance(left, Identifier) and isinstance(right, Identifier):
            left_column, right_column = self.column(left), self.column(right)
            _check_comparable(left.name, left_column.dtype, right.name, right_column.dtype, right)
            return f"({left_column.sql} {op} {right_column.sql})"
        if isinstance(left, Identifier):
            column = self.column(left)
            self.params.append(self.value(left.name, column.dtype, right))
            return f"({column.sql} {op} ?)"
        if isinstance(right, Identifier):
            column = self.column(right)
            self.params.append(self.value(right.name, column.dtype, left))
            return f"(? {op} {column.sql})"
        raise _PositionedError("a comparison needs an identifier on at least one side", node.pos)

    def value(self, name: str, dtype: str, operand: Literal | Bind) -> object:
        return _checked(name, dtype, _operand_value(operand, self.binds), operand.pos)

    def in_list(self, node: InList) -> str:
        name = node.identifier.name
        column = self.column(node.identifier)
        scalars: list[object] = []
        ranges: list[Range] = []
        for item in node.items:
            if isinstance(item, Range):
                _check_range_type(name, column.dtype, item)
                ranges.append(item)
            else:
                values = _item_values(item, self.binds)
                scalars.extend(_checked(name, column.dtype, v, item.pos) for v in values)
        parts: list[str] = []
        if scalars:
            parts.append(f"{column.sql} IN ({', '.join('?' * len(scalars))})")
            self.params.extend(scalars)
        for item in ranges:
            part = f"({column.sql} BETWEEN ? AND ?"
            self.params.extend([item.start, item.stop])
            if item.stride > 1:
                part += f" AND ({column.sql} - ?) % ? = 0"
                self.params.extend([item.start, item.stride])
            parts.append(part + ")")
        sql = "(" + " OR ".join(parts) + ")" if parts else "FALSE"
        return f"(NOT {sql})" if node.negated else sql


def _check_comparable(
    left_name: str, left_dtype: str, right_name: str, right_dtype: str, at: Node
) -> None:
    if _FAMILY[left_dtype] != _FAMILY[right_dtype]:
        raise _PositionedError(
            f"cannot compare {left_name} ({_DTYPE_WORDS[left_dtype]}) with "
            f"{right_name} ({_DTYPE_WORDS[right_dtype]})",
            at.pos,
        )


def _check_range_type(name: str, dtype: str, item: Range) -> None:
    if dtype != "int":
        kind = "field" if "." in name else "dimension"
        raise _PositionedError(
            f"ranges need an integer column; {name} is {_DTYPE_WORDS[dtype]} {kind}", item.pos
        )


def _unknown_identifier(
    identifier: Identifier, known: Mapping[str, object], label: str
) -> _PositionedError:
    names = sorted(known)
    close = difflib.get_close_matches(identifier.name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    listing = ", ".join(names) or "none"
    return _PositionedError(
        f"unknown identifier '{identifier.name}'{hint}; {label}: {listing}", identifier.pos
    )


def compile_where(
    text_or_node: str | Node | None,
    columns: Mapping[str, Column],
    binds: Mapping[str, object] | None = None,
) -> tuple[str, list]:
    """Compile a where-expression to an SQL fragment with ``?`` placeholders.

    Parameters
    ----------
    text_or_node : str, Node or None
        The expression text, or a tree from :func:`parse_where`.
    columns : Mapping[str, Column]
        The identifiers the expression may use, each mapped to trusted SQL and a dtype.
    binds : Mapping[str, object], optional
        Values of the ``:name`` placeholders (keys without the colon). Inside ``IN`` a bind may
        hold a list, tuple, set, range or array of values.

    Returns
    -------
    sql : str
        The fragment, e.g. ``'((d."visit" BETWEEN ? AND ?) AND (d."band" = ?))'``; ``'TRUE'``
        for an empty expression. It contains only column SQL, operators, keywords and ``?``.
    params : list
        The values for the placeholders, in order.

    Raises
    ------
    WhereSyntaxError
        On a syntax error, an unknown identifier (the message lists the known ones), a missing
        bind, or a value whose type does not match its column.
    """
    node, text = _as_node(text_or_node)
    if node is None:
        return "TRUE", []
    compiler = _SqlCompiler(columns, _Binds(binds))
    try:
        sql = compiler.condition(node)
    except _PositionedError as error:
        raise _format_error(error, text) from None
    return sql, compiler.params


# ---------------------------------------------------------------------------------------------
# Python back end
# ---------------------------------------------------------------------------------------------

_PY_OPS: dict[str, Callable[[object, object], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _sort_key(value: object) -> object:
    """Order values as DuckDB does: NaN equals NaN and sorts above every other number."""
    if isinstance(value, float) and math.isnan(value):
        return (1, 0.0)
    if isinstance(value, bool | str):
        return value
    return (0, value)


class _RowEvaluator:
    """Evaluate a tree against one row with SQL three-valued logic (None is NULL/unknown)."""

    def __init__(self, row: Mapping[str, object], binds: _Binds) -> None:
        self.row = row
        self.binds = binds

    def lookup(self, identifier: Identifier) -> tuple[object, str | None]:
        """The row's value for an identifier and its dtype (None for a NULL value)."""
        if identifier.name not in self.row:
            raise _unknown_identifier(identifier, self.row, "the row has")
        value = self.row[identifier.name]
        if value is None:
            return None, None
        dtype = _value_type(value)
        if dtype is None:
            raise _PositionedError(
                f"the row's value of {identifier.name} has unsupported type {type(value).__name__}",
                identifier.pos,
            )
        return _normalized(value, dtype), dtype

    def truth(self, node: Node) -> bool | None:
        # Every operand is evaluated (no short cut) so errors do not depend on the row's values.
        if isinstance(node, And):
            results = [self.truth(operand) for operand in node.operands]
            return False if False in results else (None if None in results else True)
        if isinstance(node, Or):
            results = [self.truth(operand) for operand in node.operands]
            return True if True in results else (None if None in results else False)
        if isinstance(node, Not):
            result = self.truth(node.operand)
            return None if result is None else not result
        if isinstance(node, Literal) and isinstance(node.value, bool):
            return node.value
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, InList):
            return self.in_list(node)
        raise _not_a_condition(node)

    def compare(self, node: Compare) -> bool | None:
        left, right = node.left, node.right
        if isinstance(left, Identifier) and isinstance(right, Identifier):
            left_value, left_dtype = self.lookup(left)
            right_value, right_dtype = self.lookup(right)
            if left_dtype is None or right_dtype is None:
                return None
            _check_comparable(left.name, left_dtype, right.name, right_dtype, right)
        elif isinstance(left, Identifier):
            left_value, right_value = self.side(left, right)
        elif isinstance(right, Identifier):
            right_value, left_value = self.side(right, left)
        else:
            raise _PositionedError(
                "a comparison needs an identifier on at least one side", node.pos
            )
        if left_value is None or right_value is None:
            return None
        return _PY_OPS[node.op](_sort_key(left_value), _sort_key(right_value))

    def side(self, identifier: Identifier, operand: Literal | Bind) -> tuple[object, object]:
        """The row value of ``identifier`` and the checked value of ``operand``."""
        row_value, dtype = self.lookup(identifier)
        value = _operand_value(operand, self.binds)
        if dtype is None:
            return None, value
        return row_value, _checked(identifier.name, dtype, value, operand.pos)

    def in_list(self, node: InList) -> bool | None:
        name = node.identifier.name
        row_value, dtype = self.lookup(node.identifier)
        found = False
        for item in node.items:
            if isinstance(item, Range):
                if dtype is not None:
                    _check_range_type(name, dtype, item)
                    found |= _in_range(row_value, item)  # type: ignore[arg-type]
                continue
            for value in _item_values(item, self.binds):
                if dtype is not None:
                    checked = _checked(name, dtype, value, item.pos)
                    found |= _sort_key(checked) == _sort_key(row_value)
        if dtype is None:
            return None
        return found != node.negated


def _in_range(value: int, item: Range) -> bool:
    return item.start <= value <= item.stop and (value - item.start) % item.stride == 0


def evaluate_where(
    text_or_node: str | Node | None,
    row: Mapping[str, object],
    binds: Mapping[str, object] | None = None,
) -> bool:
    """Evaluate a where-expression against one row, with the same semantics as the SQL.

    Parameters
    ----------
    text_or_node : str, Node or None
        The expression text, or a tree from :func:`parse_where` (parse once, evaluate many).
    row : Mapping[str, object]
        Identifier -> value; ``None`` is NULL, which makes comparisons unknown as in SQL.
    binds : Mapping[str, object], optional
        Values of the ``:name`` placeholders, as for :func:`compile_where`.

    Returns
    -------
    bool
        True if the row is selected (an empty expression selects every row; an unknown result
        from NULL values does not select it, as in an SQL ``WHERE``).

    Raises
    ------
    WhereSyntaxError
        On a syntax error, an identifier missing from ``row``, a missing bind or a type mismatch.
    """
    node, text = _as_node(text_or_node)
    if node is None:
        return True
    try:
        return _RowEvaluator(row, _Binds(binds)).truth(node) is True
    except _PositionedError as error:
        raise _format_error(error, text) from None
