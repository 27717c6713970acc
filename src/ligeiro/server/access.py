"""Who may call what: inference tokens, the per-client rate limit, the exposure warning.

Each transport keeps a table from its routes (HTTP paths, gRPC methods) to a ``Route``
and asks ``Access`` about a request once: HTTP when the head is complete (the body of a
refused request is never kept), the h2 gRPC transport when a stream opens (before any
message byte), grpcio before the method runs:

- ``OPEN``: health probes (``/v2/health/*``, ServerLive, ServerReady) pass.
- ``PROTECTED``: every other route, and any route a table does not name (a new route
  is protected until someone opens it): with inference tokens set, it needs
  ``Authorization: Bearer <token>`` (gRPC: ``authorization`` metadata) with one of them
  or the admin token.
- ``METRICS``: ``/metrics``, protected unless ``metrics_public``.
- ``ADMIN``: the repository API's load and unload, which ``Control`` checks against the
  admin token alone.

Tokens are compared in constant time: the given token and each configured one are
hashed (so their lengths do not show), and every configured token is compared, with no
early exit. ``--inference-token-file`` is read again on SIGHUP (``reload``), so tokens
rotate without a restart. With no token configured every route is open, as before.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, final

from ..errors import AuthenticationError, ConfigError, RateLimitedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..settings import ServerSettings

__all__ = ["Access", "PathRedactor", "RateLimiter", "Route", "exposure_warning", "read_tokens"]

logger = logging.getLogger(__name__)

# Clients the rate limiter remembers at once; the least recently seen goes first.
MAX_CLIENTS = 10_000


class Route(enum.Enum):
    """What a route needs (the module's docstring)."""

    OPEN = "open"
    PROTECTED = "protected"
    METRICS = "metrics"
    ADMIN = "admin"


def read_tokens(path: str) -> list[str]:
    """The tokens in a token file: one a line; blank lines and ``#`` comments skipped.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"inference token file {path}: cannot read: {reason}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def bearer(authorization: bytes | str | None) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` value; empty when there is none."""
    if authorization is None:
        return b""
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    if authorization[:7].lower() != b"bearer ":
        return b""
    return authorization[7:].strip()


@final
class RateLimiter:
    """A token bucket per client: ``per_s`` requests a second, ``burst`` at once.

    The table of clients is bounded (``max_clients``): past it, the least recently
    seen client is forgotten (it starts again with a full bucket).
    """

    __slots__ = ("_buckets", "_clock", "burst", "max_clients", "per_s")

    def __init__(
        self,
        per_s: float,
        burst: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.per_s = per_s
        self.burst = float(burst or max(1, math.ceil(per_s)))
        self.max_clients = max_clients
        self._clock = clock
        # client -> (tokens left, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def admit(self, client: str) -> None:
        """Count one request of ``client``.

        Raises:
            RateLimitedError: the client's bucket is empty; ``retry_after_s`` is when
                the next request would pass.
        """
        now = self._clock()
        buckets = self._buckets
        left, then = buckets.pop(client, (self.burst, now))
        left = min(self.burst, left + (now - then) * self.per_s)
        if left < 1.0:
            buckets[client] = (left, now)
            wait = (1.0 - left) / self.per_s
            raise RateLimitedError(
                f"over the rate limit of {self.per_s:g} requests a second per client; "
                f"retry in {wait:.2f} s",
                wait,
            )
        buckets[client] = (left - 1.0, now)
        if len(buckets) > self.max_clients:
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


@final
class Access:
    """The inference tokens, and the rate limit, as every transport checks them.

    Args:
        tokens: inference tokens given directly (``--inference-token``, the environment).
        token_file: a file of tokens, read now and again on ``reload``.
        admin_token: the repository API's token; it passes protected routes too.
        metrics_public: ``/metrics`` without a token.
        rate_limit: requests per client address, if limited.

    Raises:
        ConfigError: the token file cannot be read.
    """

    __slots__ = (
        "_admin", "_digests", "_fixed", "is_enabled", "is_guarding", "metrics_public",
        "rate_limit", "token_file",
    )  # fmt: skip

    def __init__(
        self,
        tokens: Iterable[str] = (),
        *,
        token_file: str | None = None,
        admin_token: str | None = None,
        metrics_public: bool = False,
        rate_limit: RateLimiter | None = None,
    ) -> None:
        self._fixed = [t.encode() for t in tokens if t]
        self._admin = None if not admin_token else admin_token.encode()
        self.token_file = token_file
        self.metrics_public = metrics_public
        self.rate_limit = rate_limit
        # A token file counts even when empty: it then lets no one in, never everyone.
        self.is_enabled = bool(self._fixed) or token_file is not None
        # Whether any request is checked at all: the one test an open server pays.
        self.is_guarding = self.is_enabled or rate_limit is not None
        self._digests: tuple[bytes, ...] = ()
        self._load(self._file_tokens())

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Access:
        limiter = None
        if settings.rate_limit_per_s > 0:
            limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        return cls(
            settings.inference_tokens,
            token_file=settings.inference_token_file,
            admin_token=settings.admin_token,
            metrics_public=settings.metrics_public,
            rate_limit=limiter,
        )

    def _file_tokens(self) -> list[bytes]:
        if self.token_file is None:
            return []
        return [t.encode() for t in read_tokens(self.token_file)]

    def _load(self, from_file: list[bytes]) -> None:
        tokens = [*self._fixed, *from_file]
        if self._admin is not None and self.is_enabled:
            tokens.append(self._admin)
        self._digests = tuple(_digest(t) for t in tokens)

    def reload(self) -> int:
        """Read the token file again (SIGHUP); on a failure the tokens stay as they were.

        Returns:
            How many tokens pass now (the admin token included).
        """
        if self.token_file is not None:
            try:
                self._load(self._file_tokens())
            except ConfigError as exc:
                logger.error("%s; the previous tokens stay in force", exc)
        return len(self._digests)

    def is_allowed(self, given: bytes) -> bool:
        """Whether ``given`` is one of the tokens: constant time, every token compared."""
        digest = _digest(given)
        found = False
        for token in self._digests:
            found |= hmac.compare_digest(digest, token)
        return found and bool(given)

    def check(self, route: Route, authorization: bytes | str | None) -> None:
        """Let a request to ``route`` through, or raise.

        Raises:
            AuthenticationError: the route needs a token and the request has none that
                passes.
        """
        if not self.is_enabled or route is Route.OPEN or route is Route.ADMIN:
            return
        if route is Route.METRICS and self.metrics_public:
            return
        given = bearer(authorization)
        if not given:
            raise AuthenticationError("this server needs 'Authorization: Bearer <token>'")
        if not self.is_allowed(given):
            raise AuthenticationError("the bearer token is not one this server accepts")

    def admit(self, client: str) -> None:
        """Count a request of ``client`` against the rate limit, if there is one.

        Raises:
            RateLimitedError: over the limit.
        """
        if self.rate_limit is not None:
            self.rate_limit.admit(client)


# An absolute path of two parts or more, not inside a URL or another path.
_ABSOLUTE = re.compile(r"(?<![\w.:/-])(?:/[\w.@+-]+)+/([\w.@+-]+)")


@final
class PathRedactor:
    """Takes the server's file paths out of a message meant for a client (logs keep
    them): the repository root goes (``iris/1/model.onnx`` stays), and any other
    absolute path is cut to its last part."""

    __slots__ = ("_prefixes",)

    def __init__(self, root: Path) -> None:
        forms = {str(root), str(root.absolute()), str(root.resolve())} - {"", "."}
        self._prefixes = sorted((f.rstrip("/") + "/" for f in forms), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for prefix in self._prefixes:
            text = text.replace(prefix, "")
        return _ABSOLUTE.sub(r"\1", text) if "/" in text else text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def exposure_warning(settings: ServerSettings) -> str | None:
    """What to warn about at start: a non-loopback address without tokens or TLS."""
    hosts = [settings.http.host]
    if settings.grpc.enabled:
        hosts.append(settings.grpc_host())
    exposed = sorted({h for h in hosts if not _is_loopback(h)})
    if not exposed:
        return None
    where = ", ".join(exposed)
    if not settings.inference_tokens and settings.inference_token_file is None:
        return (
            f"listening on {where} with no inference token: anyone who reaches the port "
            "can run inference and read the models' metadata, statistics and metrics. "
            "Set --inference-token (or LIGEIRO_INFERENCE_TOKENS, --inference-token-file), "
            "and --tls-cert/--tls-key, or bind 127.0.0.1 behind a gateway "
            "(docs/security.md)"
        )
    if not settings.tls.is_enabled:
        return (
            f"listening on {where} without TLS: bearer tokens and data cross the network "
            "in clear text. Set --tls-cert and --tls-key, or terminate TLS in front "
            "(docs/security.md)"
        )
    return None
