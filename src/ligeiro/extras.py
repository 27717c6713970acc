"""Optional extras: check that one is installed before a command needs it.

What an extra holds is read from ligeiro's own installed metadata (the ``extra == "..."``
requirements of ``pyproject.toml``), so there is no second list of packages to keep.
A command that needs an extra calls :func:`require` first, and a missing package ends
it with one sentence naming ``pip install 'ligeiro[extra]'`` instead of an ImportError
deep inside.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Final

from .errors import LigeiroError

__all__ = ["MissingExtraError", "missing_packages", "packages", "require"]

_NAME: Final = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]*)\])?")
_EXTRA: Final = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


class MissingExtraError(LigeiroError):
    """A command needs an optional extra that is not installed (a usage error: exit 2)."""

    exit_code = 2


def _requirements(extra: str, seen: set[str]) -> list[str]:
    """The distributions ``ligeiro[extra]`` asks for, nested extras expanded."""
    seen.add(extra)
    try:
        requires = metadata.requires("ligeiro") or []
    except metadata.PackageNotFoundError:  # run from a source tree, not installed: no metadata
        return []
    names: list[str] = []
    for line in requires:
        requirement, _, marker = line.partition(";")
        found = _EXTRA.search(marker)
        if found is None or found.group(1) != extra:
            continue
        match = _NAME.match(requirement)
        if match is None:  # pragma: no cover - metadata pip wrote is well-formed
            continue
        name, nested = match.group(1), match.group(3)
        if name.lower() == "ligeiro":
            for inner in (nested or "").split(","):
                if inner.strip() and inner.strip() not in seen:
                    names += _requirements(inner.strip(), seen)
        else:
            names.append(name)
    return names


def packages(extra: str) -> list[str]:
    """The distributions ``ligeiro[extra]`` installs, as ligeiro's metadata lists them."""
    return _requirements(extra, set())


def missing_packages(extra: str) -> list[str]:
    """The distributions of ``ligeiro[extra]`` that are not installed, in metadata order."""
    missing = []
    for name in packages(extra):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` unless every package of ``ligeiro[extra]`` is installed.

    ``what`` names the feature in the message ("ligeiro convert", "tracing").
    """
    missing = missing_packages(extra)
    if missing:
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'ligeiro[{extra}]'"
        )
