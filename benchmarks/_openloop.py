"""The open-loop HTTP/1.1 generator, now ``ligeiro.bench._openloop`` (``ligeiro bench --rate``).

Kept so that ``python -m benchmarks._openloop URL --rate R ...`` and the benchmarks'
imports still work; see the package module for the design.
"""

from __future__ import annotations

import sys

from ligeiro.bench._openloop import (
    OpenLoop as OpenLoop,
)
from ligeiro.bench._openloop import (
    OpenLoopResult as OpenLoopResult,
)
from ligeiro.bench._openloop import (
    http_request as http_request,
)
from ligeiro.bench._openloop import (
    main as main,
)
from ligeiro.bench._openloop import (
    percentile as percentile,
)
from ligeiro.bench._openloop import (
    run_open_loop as run_open_loop,
)

__all__ = ["OpenLoop", "OpenLoopResult", "http_request", "main", "percentile", "run_open_loop"]

if __name__ == "__main__":
    sys.exit(main())
