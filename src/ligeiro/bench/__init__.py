"""``ligeiro bench``: load any V2 server (ligeiro, Triton, MLServer) and report per level.

Closed-loop concurrency sweeps, open-loop constant rates and k6-style ramping stages
over keep-alive HTTP/1.1 (``_openloop``) or gRPC (``_grpcloop``, ``grpc://HOST:PORT``),
with p50/p90/p95/p99/max, errors by HTTP status or gRPC code name,
the server's CPU and RSS when it exports ligeiro's metrics, and the generator's own CPU.

Example:
    >>> from ligeiro.bench import BenchPlan, format_table, run_bench
    >>> body = b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32",'
    >>> body += b'"data":[5.1,3.5,1.4,0.2]}]}'
    >>> request = http_request("http://127.0.0.1:8000/v2/models/iris/infer", body)
    >>> plan = BenchPlan("127.0.0.1", 8000, request, concurrency=[1, 4], duration_s=2)
    >>> print(format_table(run_bench(plan)))  # doctest: +SKIP
"""

from __future__ import annotations

from ._grpcloop import infer_request_bytes as infer_request_bytes
from ._openloop import http_request as http_request
from ._payload import payload_from_metadata as payload_from_metadata
from ._plan import Stage as Stage
from ._plan import parse_concurrency as parse_concurrency
from ._plan import parse_stages as parse_stages
from ._report import format_table as format_table
from ._report import to_html as to_html
from ._report import to_json as to_json
from ._runner import BenchPlan as BenchPlan
from ._runner import Level as Level
from ._runner import run_bench as run_bench

__all__ = [
    "BenchPlan",
    "Level",
    "Stage",
    "format_table",
    "http_request",
    "infer_request_bytes",
    "parse_concurrency",
    "parse_stages",
    "payload_from_metadata",
    "run_bench",
    "to_html",
    "to_json",
]
