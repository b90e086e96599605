"""The ``drp`` command: a thin click skin over :mod:`repo` and :mod:`stages`.

Each command parses its options, calls the library and prints; errors of drp's own types become one
line on stderr and exit status 1. The commands live in :mod:`cli.repo_commands` (the repository)
and :mod:`cli.pipeline_commands` (pipelines, the demo and the report); this module makes the group.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from repo.errors import DrpError

from . import pipeline_commands, repo_commands


class DrpGroup(click.Group):
    """A click group that turns drp's errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DrpError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=DrpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="drp")
def cli(verbose: int) -> None:
    """drp: data-release production on a Butler-style data lake.

    REPO is a local path or a URL (s3://bucket/prefix, memory://name). S3 endpoint and credentials
    come from the AWS environment variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or from
    --storage-option.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


for _command in [*repo_commands.COMMANDS, *pipeline_commands.COMMANDS]:
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="drp")


if __name__ == "__main__":
    main()
