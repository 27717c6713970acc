"""The exceptions ligeiro raises, as one tree with no transport in it.

::

    LigeiroError
    ├── ModelNotFoundError        unknown model or version
    ├── ModelNotReadyError        known, but failed to load or not loaded yet
    ├── InvalidInputError         the request does not fit the model or the protocol
    │   ├── RequestTooLargeError  the body is over the configured limit
    │   └── UnsupportedEncodingError  a Content-Encoding the server cannot decode
    ├── InferenceError            the runtime failed on input that looked valid
    ├── ServerOverloadedError     a bounded queue is full
    │   └── RateLimitedError      a client is over its request rate (retry_after_s)
    ├── DeadlineExceededError     the request's timeout passed while it waited
    ├── ModelLoadError            a model file or config cannot be loaded
    ├── AuthenticationError       a bearer token (inference or admin) is missing or wrong
    ├── ControlDisabledError      the admin API is off (model control is not "explicit")
    ├── ConfigError               a server setting is invalid
    └── ConversionError           a saved model cannot be converted, or its ONNX disagrees
        └── UntrustedModelError   the file needs unpickling (runs code) and was not trusted

Each transport maps these to its own status codes in a single table
(``server/http.py``, ``server/grpc.py``); nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ControlDisabledError",
    "ConversionError",
    "DeadlineExceededError",
    "InferenceError",
    "InvalidInputError",
    "LigeiroError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "RateLimitedError",
    "RequestTooLargeError",
    "ServerOverloadedError",
    "UnsupportedEncodingError",
    "UntrustedModelError",
]


class LigeiroError(Exception):
    """Base of every error ligeiro raises on purpose.

    ``exit_code`` is what the CLI exits with when this error ends a command.
    """

    exit_code = 1


class ModelNotFoundError(LigeiroError):
    """The repository has no model (or no version) of that name."""

    exit_code = 3


class ModelNotReadyError(LigeiroError):
    """The model exists but cannot serve: it failed to load, or is not loaded yet."""

    exit_code = 3


class InvalidInputError(LigeiroError):
    """The request is malformed, or does not match the model's inputs."""

    exit_code = 2


class RequestTooLargeError(InvalidInputError):
    """The request body is larger than the configured limit."""


class UnsupportedEncodingError(InvalidInputError):
    """The request body is compressed in a way the server does not decode."""


class InferenceError(LigeiroError):
    """The runtime failed while running a request that passed validation."""


class ServerOverloadedError(LigeiroError):
    """A bounded queue is full; the client should retry later."""


class RateLimitedError(ServerOverloadedError):
    """The client sent more requests than its rate allows; ``retry_after_s`` says when
    the next one would pass."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(LigeiroError):
    """The request's own timeout passed before the model ran it."""


class ModelLoadError(LigeiroError):
    """A model folder, file or config cannot be loaded; the message names the file."""

    exit_code = 2


class ConfigError(LigeiroError):
    """A server setting is invalid; the message names the source and the key."""

    exit_code = 2


class ConversionError(LigeiroError):
    """A saved model cannot be converted to ONNX, or the ONNX model failed the parity check.

    The message names the file and, for a failed check, carries the report's table.
    """


class UntrustedModelError(ConversionError):
    """Loading the file would unpickle it (which runs code) and it was not trusted.

    The message says which file, why, and how to go on (trust it once, convert, serve
    the ONNX).
    """

    exit_code = 2


class AuthenticationError(LigeiroError):
    """The route needs a bearer token (an inference token, or the repository API's admin
    token) and the request lacks it or sends a wrong one."""


class ControlDisabledError(LigeiroError):
    """The repository API's changes are off: the server runs without explicit control."""
