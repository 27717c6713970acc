"""atheris (coverage-guided), differential: ligeiro's ModelInferRequest reader against protobuf's.

For any bytes, ``parse_infer_request`` (and its ``decode``) must end as
``ModelInferRequest.FromString`` followed by ``decode_infer_request`` does: both refuse,
both give the same error, or both decode the same names, id, outputs and arrays
(compared byte for byte, so NaNs compare). A difference or another exception is a
crash, written as ``crash-*`` (``make fuzz`` puts those in ``tests/fuzz/found``).

    .venv/bin/python tests/fuzz/grpc_scanner.py -max_total_time=60 CORPUS tests/fuzz/seeds/grpc
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import atheris

with atheris.instrument_imports():
    from google.protobuf.message import DecodeError

    from ligeiro.errors import InvalidInputError
    from ligeiro.protocol.grpc_codec import decode_infer_request, parse_infer_request, pb


def _outcome(read: Any) -> tuple[Any, ...]:
    try:
        header, decode = read()
    except InvalidInputError:
        return ("refused",)
    try:
        decoded = decode()
    except InvalidInputError as exc:
        return ("error", header, str(exc))
    inputs = {
        name: (a.dtype.str, a.shape, a.tolist() if a.dtype.kind == "O" else a.tobytes())
        for name, a in decoded.inputs.items()
    }
    return ("decoded", header, inputs, decoded.outputs, decoded.id, decoded.timeout_s)


def _by_ligeiro(data: bytes) -> tuple[Any, Any]:
    parsed = parse_infer_request(data)
    return (parsed.model_name, parsed.model_version, parsed.id), parsed.decode


def _by_protobuf(data: bytes) -> tuple[Any, Any]:
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidInputError(str(exc)) from exc
    header = (message.model_name, message.model_version, message.id)
    return header, lambda: decode_infer_request(message)


def one_input(data: bytes) -> None:
    ours = _outcome(lambda: _by_ligeiro(data))
    theirs = _outcome(lambda: _by_protobuf(data))
    if ours != theirs:
        raise AssertionError(f"ligeiro {ours!r:.300} != protobuf {theirs!r:.300}")


def main() -> None:
    warnings.simplefilter("error")
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
