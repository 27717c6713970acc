"""atheris (coverage-guided) on the V2 REST decoder: any bytes are a request or an InvalidInputError.

``protocol.codec.decode_infer_request`` gets what libFuzzer makes of the seeds in
``tests/fuzz/seeds/rest``: the first input byte says whether an
``Inference-Header-Content-Length`` comes with it (the binary extension) and where the
JSON ends. Another exception, or a numpy warning, is a crash: libFuzzer stops and
writes the input as ``crash-*`` (``make fuzz`` puts those in ``tests/fuzz/found``).

    .venv/bin/python tests/fuzz/rest_decoder.py -max_total_time=60 CORPUS tests/fuzz/seeds/rest
"""

from __future__ import annotations

import sys
import warnings

import atheris

with atheris.instrument_imports():
    from ligeiro.errors import InvalidInputError
    from ligeiro.protocol.codec import DecodedRequest, decode_infer_request


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    # mode < 128: JSON only; else the JSON's length is mode - 128 bytes from the end's
    # side, clamped: a binary extension request, its length maybe off by one.
    header_length = None if mode < 128 else max(len(body) - (mode - 128), 0) + (mode % 3 - 1)
    try:
        decoded = decode_infer_request(body, header_length)
    except InvalidInputError as exc:
        assert str(exc)
        return
    assert isinstance(decoded, DecodedRequest)


def main() -> None:
    warnings.simplefilter("error")  # numpy's "overflow in cast" would be a wrong answer
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
