"""Fuzzing the settings: any ligeiro.toml, LIGEIRO_* environment and command-line layer
gives settings or a ConfigError naming its source, never another exception (which the
CLI would print as a traceback). Bounded: a fixed seed (``make fuzz``
runs it long)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st

from ligeiro.errors import ConfigError
from ligeiro.settings import ServerSettings, load_settings
from tests.fuzz import fuzz

_KEYS = ["http", "grpc", "runtime", "port", "host", "workers", "model_control", "threads",
         "admin_token", "graceful_timeout_s", "max_request_bytes", "providers", "enabled",
         "repository", "x", ""]  # fmt: skip
_VALUES = st.one_of(
    st.integers(-2, 70_000), st.integers(), st.floats(), st.booleans(), st.text(max_size=6),
    st.sampled_from(["poll", "none", "explicit", "0", "8080", "cpu", "true", "1e3"]),
)  # fmt: skip
_LAYERS = st.recursive(
    _VALUES | st.lists(_VALUES, max_size=2),
    lambda inner: st.dictionaries(st.sampled_from(_KEYS), inner, max_size=3),
    max_leaves=8,
)
_ENV_NAMES = st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3).map(
    lambda parts: "LIGEIRO_" + "__".join(parts).upper()
)
_TOML = st.one_of(
    st.sampled_from(["[http]\nport = 1\n", "workers = 'x'\n", "[http\n", "http = 3\n",
                     "[[http]]\nport = 1\n", "graceful_timeout_s = -1\n", "\xff = 1\n"]),
    st.text(max_size=30),
)  # fmt: skip


# tmp_path is shared by the examples: each writes its own ligeiro.toml over it.
@fuzz(400, HealthCheck.function_scoped_fixture)
@given(
    cli=st.dictionaries(st.sampled_from(_KEYS), _LAYERS, max_size=3),
    env=st.dictionaries(_ENV_NAMES, st.text(max_size=6), max_size=4),
    toml=st.none() | _TOML,
)
# Found by this test: a section set to a value and one of its fields set too was a
# TypeError (when the section's variable came first in the environment).
@example(cli={}, env={"LIGEIRO_HTTP": "x", "LIGEIRO_HTTP__PORT": "1"}, toml=None)
def test_any_settings_are_settings_or_a_config_error(
    tmp_path: Path, cli: dict[str, Any], env: dict[str, str], toml: str | None
) -> None:
    config_file = None
    if toml is not None:
        config_file = tmp_path / "ligeiro.toml"
        config_file.write_text(toml, errors="surrogateescape")
    try:
        loaded = load_settings(cli, config_file=config_file, env=env)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(loaded, ServerSettings)
