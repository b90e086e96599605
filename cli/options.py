"""Options and helpers shared by the ``drp`` commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from repo.repository import Repository
from repo.storage import parse_storage_options

from .output import FORMATS


def split_values(values: Sequence[str]) -> list[str]:
    """Accept repeated options and comma-separated lists alike."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def parse_binds(pairs: Sequence[str]) -> dict[str, Any]:
    binds: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not name=value", param_hint="--bind")
        items = [bind_value(v) for v in value.split(",")]
        binds[key.strip()] = items if len(items) > 1 else items[0]
    return binds


def bind_value(text: str) -> Any:
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


storage_option = click.option(
    "--storage-option",
    "-o",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec/s3fs option, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable).",
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output format.",
)
where_option = click.option(
    "--where",
    default="",
    metavar="EXPR",
    help="Constraint, e.g. \"visit IN (1..20) AND band = 'r'\".",
)
bind_option = click.option(
    "--bind",
    "binds",
    multiple=True,
    metavar="NAME=VALUE",
    help="Value for :NAME in --where (comma-separated for a list).",
)
collections_option = click.option(
    "--collections",
    multiple=True,
    metavar="COLL",
    help="Collections to search, in order (repeatable or a,b).",
)


def open_repo(url: str, storage_options: Sequence[str]) -> Repository:
    return Repository(url, parse_storage_options(storage_options))


config_option = click.option(
    "--config",
    "overrides",
    multiple=True,
    metavar="LABEL.KEY=VALUE",
    help="Override a stage's config, e.g. calibrate.gain=1.5 (repeatable).",
)
