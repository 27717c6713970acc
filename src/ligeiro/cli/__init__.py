"""The ``ligeiro`` command: ``serve``, ``infer``, ``convert``, ``optimize``, ``score``,
``package``, ``bench`` and ``version``.

Errors print one line and exit with the code their class defines. Each command family
is a module here (``_serve``, ``_convert``, ``_score``, ``_bench``) that adds its
commands to the group of ``_group``.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import LigeiroError
from . import _bench, _convert, _score, _serve  # noqa: F401  (each adds its commands)
from ._group import cli

__all__ = ["cli", "main"]


@cli.command()
def version() -> None:
    """Print ligeiro's version."""
    click.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a LigeiroError ends it with one line and the error's exit code."""
    try:
        cli.main(args=argv, prog_name="ligeiro", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LigeiroError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)

    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
