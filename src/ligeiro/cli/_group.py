"""The ``ligeiro`` click group, and what its commands share."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

__all__ = ["NeedsExtra", "cli", "plain_logging"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """ligeiro: serve ONNX models over the KServe V2 protocol, fast."""


class NeedsExtra(click.Command):
    """A command that needs an optional extra: without it, one sentence and exit 2.

    Checked before the arguments, so that a user without the extra learns that first
    (``--help`` still works).
    """

    def __init__(self, *args: Any, extra: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = extra

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not any(arg in ctx.help_option_names for arg in args):
            from ..extras import require

            require(self.extra, f"ligeiro {self.name}")
        return super().parse_args(ctx, args)


def plain_logging() -> None:
    """Log lines as they are (INFO and up) on stderr: the build commands' progress."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
