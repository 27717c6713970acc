"""The data plane: one inference call, from a transport's request to its answer.

``DataPlane.infer`` is a request's whole life past the socket, in one straight line:
resolve the model → admit it (a full queue refuses before anything is decoded) →
decode the payload with the codec the transport hands it → ``Engine.submit`` → encode
the answer → observe the request once (Prometheus, the access log, the trace). REST
``:infer`` and ``:predict`` and gRPC ``ModelInfer``/``ModelStreamInfer`` (on either
gRPC transport) are thin adapters over it: each keeps its framing, its routing and its
table from the domain's errors to its statuses (``Transport.status``).

Two server-wide limits hold here, once for every transport, after the codec decodes:
rows per request (``max_request_rows``: an input's first dimension) and the size of a
BYTES element (``max_bytes_element_bytes``). ``Engine.infer``, the in-process API, does
not apply them.

Tracing hooks into this call: with tracing off the call tests it once and takes the
plain path; on, the same steps run with their stages timed (``_traced``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol, TypeVar, final

from .errors import InvalidInputError, LigeiroError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    import numpy as np

    from .accesslog import AccessLog
    from .engine import Engine
    from .metrics import Metrics
    from .repository.registry import ModelVersion
    from .tracing import RequestTrace, Tracing

__all__ = ["Codec", "DataPlane", "Decoded", "Transport"]

logger = logging.getLogger(__name__)

_P = TypeVar("_P", contravariant=True)
_D = TypeVar("_D", bound="Decoded")
_A = TypeVar("_A", covariant=True)
_Answer = TypeVar("_Answer")
_Payload = TypeVar("_Payload")
_Request = TypeVar("_Request", bound="Decoded")


class Decoded(Protocol):
    """A request in numpy, as a codec decodes it: what ``Engine.submit`` takes."""

    @property
    def inputs(self) -> Mapping[str, np.ndarray]: ...
    @property
    def outputs(self) -> Sequence[str] | None: ...
    @property
    def id(self) -> str | None: ...
    @property
    def timeout_s(self) -> float | None: ...


class Codec(Protocol[_P, _D, _A]):
    """One wire shape of an inference request and its answer (``protocol/`` has them)."""

    def decode(self, model: ModelVersion, payload: _P, /) -> _D:
        """The request in numpy.

        Raises:
            InvalidInputError: the payload is malformed or does not fit ``model``.
        """
        ...

    def encode(self, model: ModelVersion, request: _D, outputs: dict[str, np.ndarray], /) -> _A:
        """The answer to ``request``, as the transport frames it."""
        ...


@final
class Transport:
    """What the inference call records of the transport that carried a request.

    Args:
        name: the ``protocol`` label of metrics and access-log lines (``http``, ``grpc``).
        ok: the status a served request records (``200``, ``OK``).
        unexpected: the status of a failure outside the domain's error tree.
        status: the transport's table, from a domain error to the status it answers.
    """

    __slots__ = ("name", "ok", "status", "unexpected")

    def __init__(
        self, name: str, ok: str, unexpected: str, status: Callable[[LigeiroError], str]
    ) -> None:
        self.name = name
        self.ok = ok
        self.unexpected = unexpected
        self.status = status


def _check_limits(inputs: Mapping[str, np.ndarray], max_rows: int, max_element_bytes: int) -> None:
    """Refuse a decoded request over the server-wide rows or BYTES element limit.

    Per input, a few attribute reads; a BYTES (object) input's elements are measured.

    Raises:
        InvalidInputError: an input's first dimension is over ``max_rows``, or one of
            its BYTES elements is over ``max_element_bytes``; it names the setting.
    """
    for name, array in inputs.items():
        if array.ndim and array.shape[0] > max_rows:
            raise InvalidInputError(
                f"input {name!r}: {array.shape[0]} rows, more than the server's limit of "
                f"{max_rows} (max_request_rows)"
            )
        if array.dtype.hasobject and array.size:
            _check_elements(name, array, max_element_bytes)


def _check_elements(name: str, array: np.ndarray, limit: int) -> None:
    # A str element is at most 4 UTF-8 bytes a character: the longest one under a
    # quarter of the limit clears them all without encoding any.
    if max(map(len, array.flat)) <= limit // 4:
        return
    for i, element in enumerate(array.flat):
        size = len(element)
        if isinstance(element, str) and size > limit // 4:
            size = len(element.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise InvalidInputError(
                f"input {name!r}: BYTES element {i} is {size} bytes, more than the "
                f"server's limit of {limit} (max_bytes_element_bytes)"
            )


@final
class DataPlane:
    """The one inference call the transports share, and the request's observation.

    Args:
        engine: the models.
        metrics: where requests are counted and timed.
        access_log: where requests are logged, if anywhere.
        tracing: where requests are traced, if anywhere (``None``: off, one test a call).
        max_rows: the most rows (first dimension) an input of a request may have.
        max_element_bytes: the most bytes a BYTES element may have (UTF-8 for text).
    """

    __slots__ = ("access_log", "engine", "max_element_bytes", "max_rows", "metrics", "tracing")

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        access_log: AccessLog | None = None,
        tracing: Tracing | None = None,
        max_rows: int = 1_000_000,
        max_element_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.access_log = access_log
        self.tracing = tracing
        self.max_rows = max_rows
        self.max_element_bytes = max_element_bytes

    async def infer(
        self,
        transport: Transport,
        name: str,
        version: str | None,
        payload: _Payload,
        codec: Codec[_Payload, _Request, _Answer],
        *,
        request_id: str | None = None,
        metadata: Callable[[], Iterable[tuple[str, str]]] | None = None,
    ) -> _Answer:
        """Serve one inference request: resolve, admit, decode, submit, encode, observe.

        Args:
            transport: the carrier's labels and error table.
            name, version: the model asked for (``None``: its default version).
            payload: the request as the transport received it, for ``codec.decode``.
            codec: the request's wire shape.
            request_id: the request's id when the transport read it before decoding.
            metadata: the request's headers (HTTP) or metadata (gRPC), read for the W3C
                trace context when tracing is on.

        Returns:
            ``codec.encode``'s answer.

        Raises:
            LigeiroError: the request failed (recorded with ``transport.status``); any
            other exception is recorded as ``transport.unexpected`` and raised as is.
        """
        if self.tracing is not None:  # the one test tracing costs when off
            return await self._traced(
                self.tracing, transport, name, version, payload, codec, request_id, metadata
            )
        start = time.perf_counter()
        model: ModelVersion | None = None
        status = transport.unexpected
        engine = self.engine
        self.metrics.request_started(transport.name)
        try:
            model = engine.model(name, version)
            engine.admit(model)  # a full queue refuses before the payload is decoded
            request = codec.decode(model, payload)
            request_id = request.id
            _check_limits(request.inputs, self.max_rows, self.max_element_bytes)
            result = await engine.submit(
                model, request.inputs, request.outputs, timeout_s=request.timeout_s
            )
            answer = codec.encode(model, request, result.outputs)
            status = transport.ok
            return answer
        except LigeiroError as exc:
            status = transport.status(exc)
            raise
        finally:
            self._observe(transport, model, status, time.perf_counter() - start, request_id)

    async def _traced(
        self,
        tracing: Tracing,
        transport: Transport,
        name: str,
        version: str | None,
        payload: _Payload,
        codec: Codec[_Payload, _Request, _Answer],
        request_id: str | None,
        metadata: Callable[[], Iterable[tuple[str, str]]] | None,
    ) -> _Answer:
        """``infer`` with its stages recorded under the request's span.

        The same steps as ``infer``'s, written out again on purpose: the untraced path
        then carries no per-stage ``if trace`` test (the hot path is measured).
        """
        start = time.perf_counter()
        traceparent = tracestate = None
        if metadata is not None:
            headers = dict(metadata())
            traceparent, tracestate = headers.get("traceparent"), headers.get("tracestate")
        trace = tracing.start(transport.name, traceparent, tracestate)
        model: ModelVersion | None = None
        status = transport.unexpected
        engine = self.engine
        self.metrics.request_started(transport.name)
        try:
            model = engine.model(name, version)
            trace.model(model)
            engine.admit(model)
            began = time.time_ns()
            request = codec.decode(model, payload)
            request_id = request.id
            _check_limits(request.inputs, self.max_rows, self.max_element_bytes)
            trace.stage("decode", began, time.time_ns())
            outputs = await self._submit_traced(trace, model, request)
            began = time.time_ns()
            answer = codec.encode(model, request, outputs)
            trace.stage("encode", began, time.time_ns())
            status = transport.ok
            return answer
        except LigeiroError as exc:
            status = transport.status(exc)
            raise
        finally:
            self._observe(transport, model, status, time.perf_counter() - start, request_id)
            trace.request_id = request_id
            trace.finish(status, status == transport.ok)

    async def _submit_traced(
        self, trace: RequestTrace, model: ModelVersion, request: Decoded
    ) -> dict[str, np.ndarray]:
        """``Engine.submit``, recorded as ``compute`` (and ``queue`` for a batched model).

        A batched model's runs are not timed per request: the model's statistics are
        read before and after, and the batches that ran in between split the time
        (``RequestTrace.ran``).
        """
        engine = self.engine
        batched = engine.is_batched(model)
        compute = engine.statistics(model).compute_infer
        runs, ns = compute.count, compute.ns
        start = time.time_ns()
        result = await engine.submit(
            model, request.inputs, request.outputs, timeout_s=request.timeout_s
        )
        end = time.time_ns()
        if batched:
            trace.ran(start, end, compute.count - runs, compute.ns - ns)
        else:
            trace.stage("compute", start, end)
        return result.outputs

    def _observe(
        self,
        transport: Transport,
        model: ModelVersion | None,
        status: str,
        seconds: float,
        request_id: str | None,
    ) -> None:
        """The one place a request is counted, timed and access-logged."""
        name, version = ("", "") if model is None else (model.name, model.version)
        self.metrics.observe_request(name, version, transport.name, status, seconds)
        if self.access_log is not None:
            self.access_log.record(transport.name, name, version, status, seconds, request_id)
