"""TLS for both transports: HTTPS and gRPC over TLS on the same ports as without it.

``ServerTls`` holds one ``ssl.SSLContext`` per transport, which differ only in ALPN
(``http/1.1`` for REST, ``h2`` for gRPC): TLS 1.2 or later, no TLS compression (CRIME),
no renegotiation, the ``ssl`` module's cipher defaults. With ``client_ca`` a client must
show a certificate that CA signed (mTLS).

``reload`` (SIGHUP) reads the certificate and key again: they are tried on a spare
context first, so a broken pair leaves the running one as it was, then loaded into the
live contexts, which new connections use; connections already open keep theirs. The
grpcio transport (which has its own TLS stack) reads the files again before the next
handshake after a reload (``generation`` tells it one happened).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, final

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..settings import TlsSettings

__all__ = ["ServerTls"]

logger = logging.getLogger(__name__)


def _context(settings: TlsSettings, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(alpn)
    _load_pair(context, settings)
    if settings.client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-client-ca {settings.client_ca}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_pair(context: ssl.SSLContext, settings: TlsSettings) -> None:
    assert settings.cert is not None and settings.key is not None
    try:
        context.load_cert_chain(settings.cert, settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--tls-cert {settings.cert} / --tls-key {settings.key}: {_reason(exc)}"
        ) from None


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


@final
class ServerTls:
    """The TLS contexts of a worker's two ports, from ``[tls]``.

    Raises:
        ConfigError: a file cannot be read, or the key does not match the certificate.
    """

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.http = _context(settings, ["http/1.1"])
        self.grpc = _context(settings, ["h2"])
        # Counts successful reloads (grpcio's certificate fetcher compares it).
        self.generation = 0

    def files(self) -> tuple[bytes, bytes, bytes | None]:
        """The key, the certificate chain and the client CA, as grpcio takes them."""
        settings = self.settings
        assert settings.cert is not None and settings.key is not None
        try:
            ca = None if settings.client_ca is None else Path(settings.client_ca).read_bytes()
            return Path(settings.key).read_bytes(), Path(settings.cert).read_bytes(), ca
        except OSError as exc:
            raise ConfigError(f"TLS file {exc.filename}: cannot read: {exc.strerror}") from None

    def reload(self) -> bool:
        """Read the certificate and key again for new connections (SIGHUP).

        Returns:
            Whether the new pair is in use; a pair that fails to load is logged and the
            previous one stays.
        """
        try:
            _context(self.settings, ["http/1.1"])  # the spare: a bad pair stops here
            _load_pair(self.http, self.settings)
            _load_pair(self.grpc, self.settings)
        except ConfigError as exc:
            logger.error("TLS reload: %s; the previous certificate stays in use", exc)
            return False
        self.generation += 1
        logger.info("TLS certificate %s read again", self.settings.cert)
        return True
