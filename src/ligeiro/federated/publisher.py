"""A round's global model as the next version of a ligeiro repository, gated by evaluation.

The publisher changes only files, in the repository's own terms (``config.toml``'s
``version_policy``, ``version_labels``, ``traffic`` and ``disabled_versions``), so the
server's hot swap (load beside, warm, switch, drain, unload; ADR 0008) does the rest:

1. ``publish``: ``<model>/<N>/model.onnx`` and ``federated.json`` are written under a
   hidden name and renamed into place; then ``config.toml`` loads both the serving
   version (label ``stable``) and ``N`` (label ``canary``), splitting unversioned
   requests ``100 - canary_percent`` / ``canary_percent``.
2. ``promote``: only ``N`` loads (``stable = N``); the old version drains and unloads.
3. ``reject``: only the serving version loads, and ``disabled_versions`` keeps ``N`` on
   disk with the reason, which the repository index shows (``disabled: <reason>``) and
   the log records.

Each decision is appended to ``<model>/rounds.json``. With ``server`` set, each step
returns once the server serves the new state: ``--model-control explicit`` (given an
``admin_token``) is asked through the repository API; ``poll`` is watched through the
index (the server reacts to the files by itself).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final
from urllib.parse import quote

import msgspec

from ..errors import LigeiroError, ModelLoadError
from ..repository.config import CONFIG_FILE, ModelConfig, VersionPolicy, load_config
from ..repository.layout import MODEL_FILE
from ..repository.registry import DISABLED

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

__all__ = ["Publisher", "RoundRecord"]

logger = logging.getLogger(__name__)

FEDERATED_FILE = "federated.json"
ROUNDS_FILE = "rounds.json"
# How often the index is read while a poll-mode server picks up a change. A remote
# server sends no event to wait on; its own watcher debounces for 400 ms.
_POLL_S = 0.05


@dataclass(slots=True)
class RoundRecord:
    """What one round did to the served model.

    Attributes:
        round: the Flower server round.
        clients: devices whose updates were aggregated.
        samples: training rows behind the aggregate (as the devices reported).
        version: the version the aggregate was written as (0: none, the round failed).
        promoted: whether it became the served version.
        serving: the version served after the round.
        reason: why it was rejected ("" when promoted).
        metrics: the federated evaluation (``accuracy``, ``loss`` and the serving
            version's ``serving-accuracy``, ``serving-loss``) and training metrics.
    """

    round: int
    clients: int
    samples: int
    version: int = 0
    promoted: bool = False
    serving: int = 0
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


@final
class Publisher:
    """Writes a federation's models into ``repository/model`` and gates them.

    Args:
        repository: the model repository a ``ligeiro serve`` serves.
        model: the model folder's name; it must hold a version already (the generic
            model every device starts from).
        server: the server's URL (``http://127.0.0.1:8000``) to wait for each change
            to be served; ``None`` writes files only.
        admin_token: with ``server``, ask the repository API (explicit model control)
            to load each change instead of waiting for the server's watcher (poll).
        canary_percent: share of unversioned requests the candidate serves before
            the gate decides (1 to 99).
        timeout_s: how long to wait for the server to serve a change.

    Raises:
        ModelLoadError: the model folder is missing, has no version, or its
            ``config.toml`` is invalid.
    """

    def __init__(
        self,
        repository: Path,
        model: str,
        *,
        server: str | None = None,
        admin_token: str | None = None,
        canary_percent: int = 10,
        timeout_s: float = 60.0,
    ) -> None:
        if not 0 < canary_percent < 100:
            raise ValueError(f"canary_percent: expected 1 to 99, got {canary_percent}")
        self.folder = repository / model
        self.model = model
        self.server = server.rstrip("/") if server else None
        self._token = admin_token
        self.canary_percent = canary_percent
        self.timeout_s = timeout_s
        config = load_config(self.folder)  # raises on a bad file
        versions = self._versions()
        disabled = config.disabled_versions or {}
        labels = config.version_labels or {}
        candidates = [v for v in versions if str(v) not in disabled]
        if not candidates:
            raise ModelLoadError(
                f"{self.folder}: no version to start from (expected {self.folder}/1/{MODEL_FILE})"
            )
        self.serving = int(labels.get("stable", max(candidates)))

    # -- files --------------------------------------------------------------------------

    def _versions(self) -> list[int]:
        if not self.folder.is_dir():
            raise ModelLoadError(f"{self.folder}: no such model folder")
        return sorted(int(p.name) for p in self.folder.iterdir() if p.name.isdigit() and p.is_dir())

    def model_file(self, version: int) -> Path:
        return self.folder / str(version) / MODEL_FILE

    def _write_config(self, change: Callable[[ModelConfig], ModelConfig]) -> None:
        config = change(load_config(self.folder))
        text = msgspec.toml.encode(_drop_none(msgspec.to_builtins(config)))
        temporary = self.folder / f".{CONFIG_FILE}.tmp"
        temporary.write_bytes(text)
        os.replace(temporary, self.folder / CONFIG_FILE)  # whole, never half-written

    def _route(self, config: ModelConfig, versions: list[int], **labels: int) -> ModelConfig:
        traffic = None
        if "canary" in labels:
            traffic = {"stable": 100 - self.canary_percent, "canary": self.canary_percent}
        return msgspec.structs.replace(
            config,
            version_policy=VersionPolicy(specific=versions),
            version_labels=labels,
            traffic=traffic,
        )

    def log_round(self, record: RoundRecord) -> None:
        """Append ``record`` to ``<model>/rounds.json`` (promote and reject do)."""
        path = self.folder / ROUNDS_FILE
        rounds = json.loads(path.read_text()) if path.is_file() else []
        rounds.append(msgspec.to_builtins(record))
        temporary = self.folder / f".{ROUNDS_FILE}.tmp"
        temporary.write_text(json.dumps(rounds, indent=2) + "\n")
        os.replace(temporary, path)

    # -- the three steps ----------------------------------------------------------------

    def publish(self, onnx_bytes: bytes, record: RoundRecord, details: Mapping[str, Any]) -> int:
        """Write the candidate as the next version and serve it to the canary share.

        ``details`` go into the version's ``federated.json`` beside the round, clients
        and samples (training metrics, the fidelity report). Returns the version.
        """
        version = max(self._versions()) + 1
        staging = self.folder / f".staging-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        (staging / MODEL_FILE).write_bytes(onnx_bytes)
        about = {"round": record.round, "clients": record.clients, "samples": record.samples}
        (staging / FEDERATED_FILE).write_text(json.dumps({**about, **details}, indent=2) + "\n")
        staging.rename(self.folder / str(version))
        serving = self.serving
        self._write_config(
            lambda c: self._route(c, [serving, version], stable=serving, canary=version)
        )
        record.version = version
        self._served(lambda index: index.get(str(version), ("", ""))[0] == "READY")
        logger.info(
            "round %d: version %d serves %d %% of requests beside version %d",
            record.round,
            version,
            self.canary_percent,
            serving,
        )
        return version

    def promote(self, record: RoundRecord) -> None:
        """Serve the candidate to everyone; the old version drains and unloads."""
        version, old = record.version, self.serving
        self._write_config(lambda c: self._route(c, [version], stable=version))
        self._served(lambda index: str(old) not in index and str(version) in index)
        self.serving = record.serving = version
        record.promoted = True
        self.log_round(record)
        logger.info("round %d: version %d promoted (was %d)", record.round, version, old)

    def reject(self, record: RoundRecord, reason: str) -> None:
        """Unload the candidate and keep it on disk, disabled with ``reason``."""
        version, serving = record.version, self.serving

        def change(config: ModelConfig) -> ModelConfig:
            disabled = {**(config.disabled_versions or {}), str(version): reason}
            config = msgspec.structs.replace(config, disabled_versions=disabled)
            return self._route(config, [serving], stable=serving)

        self._write_config(change)
        self._served(lambda index: index.get(str(version), ("", ""))[1].startswith(DISABLED))
        record.serving = serving
        record.reason = reason
        self.log_round(record)
        logger.warning(
            "round %d: version %d rejected, version %d serves on: %s",
            record.round,
            version,
            serving,
            reason,
        )

    # -- the server ---------------------------------------------------------------------

    def _call(self, path: str, body: bytes) -> Any:
        assert self.server is not None
        headers = {"content-type": "application/json"}
        if self._token is not None:
            headers["authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.server + path, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            message = exc.read().decode("utf-8", "replace")
            raise LigeiroError(f"{path}: the server answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise LigeiroError(f"{path}: cannot reach the server {self.server}: {exc}") from None

    def index(self) -> dict[str, tuple[str, str]]:
        """The server's index for this model: version → (state, reason)."""
        entries = self._call("/v2/repository/index", b"{}")
        return {
            e["version"]: (e["state"], e.get("reason", ""))
            for e in entries
            if e["name"] == self.model
        }

    def _served(self, done: Callable[[dict[str, tuple[str, str]]], bool]) -> None:
        """Return once the server's index satisfies ``done`` (at once without a server).

        Raises:
            LigeiroError: the server did not get there within ``timeout_s``.
        """
        if self.server is None:
            return
        if self._token is not None:
            self._call(f"/v2/repository/models/{quote(self.model, safe='')}/load", b"{}")
        deadline = time.monotonic() + self.timeout_s
        index = self.index()
        while not done(index):
            if time.monotonic() > deadline:
                raise LigeiroError(
                    f"model {self.model!r}: the server did not serve the change within "
                    f"{self.timeout_s:.0f} s; its index: {index}"
                )
            time.sleep(_POLL_S)
            index = self.index()
