"""One-shot clients: the whole process, start to exit, against a warm server.

Seed 000 timed a whole Python client process at 0.26 s against Go's 0.05 s. This starts
``ligeiro serve`` once, then times complete processes sending the seed's payload to
``POST /v1/models/iris:predict``: ``ligeiro infer``, a ``python -c "import requests; …"``
one-liner (what most people would write), and ``curl`` (a native floor). Each client
runs twice unmeasured, then ``--runs`` times; the table shows the median and the fastest.

Run: ``python -m benchmarks.bench_oneshot [--runs 10]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from ._harness import (
    HOST,
    ROOT,
    ServerProcess,
    exclusive_machine,
    format_table,
    free_port,
    machine_info,
)

BIN: Final = Path(sys.executable).parent
SEED: Final = '{"sepal_length":6.7,"sepal_width":3.0,"petal_length":5.2,"petal_width":2.3}'
WARMUP_RUNS: Final = 2


def clients(url: str) -> dict[str, list[str]]:
    """The commands timed, each a complete process that prints the answer."""
    route = f"{url}/v1/models/iris:predict"
    requests_code = (
        "import requests; "
        f"print(requests.post({route!r}, data={SEED!r}, "
        "headers={'content-type': 'application/json'}).text)"
    )
    return {
        "ligeiro infer": [str(BIN / "ligeiro"), "infer", "iris", "--url", url, "--data", SEED],
        "python + requests": [sys.executable, "-c", requests_code],
        "curl": ["curl", "-s", "-X", "POST", route, "-H", "content-type: application/json",
                 "-d", SEED],
    }  # fmt: skip


def time_process(argv: list[str]) -> float:
    """Seconds from spawning ``argv`` to its exit; a failed or wrong answer raises."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    if json.loads(done.stdout)["label"] != "iris-virginica":
        raise RuntimeError(f"{argv[0]} answered {done.stdout!r}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per client")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)

    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    command = [str(BIN / "ligeiro"), "serve", str(ROOT / "examples" / "models"),
               "--host", HOST, "--port", str(port), "--workers", "1"]  # fmt: skip
    rows = []
    with (
        exclusive_machine(),
        ServerProcess(
            command, f"{url}/v2/health/ready", log_path=ROOT / ".bench" / "logs" / "oneshot.log"
        ) as server,
    ):
        server.start()
        for name, client in clients(url).items():
            for _ in range(WARMUP_RUNS):
                time_process(client)
            times = [time_process(client) for _ in range(args.runs)]
            rows.append((name, statistics.median(times), min(times)))
    baseline = dict((name, median) for name, median, _ in rows)["python + requests"]
    table = [
        [name, f"{median:.3f}", f"{fastest:.3f}", f"{median / baseline:.2f}x"]
        for name, median, fastest in rows
    ]
    machine = machine_info(["ligeiro", "msgspec", "click", "requests"])
    print(f"{machine.date}: {args.runs} runs per client after {WARMUP_RUNS} unmeasured, "
          f"on {machine.summary()}")  # fmt: skip
    headers = ["client", "median s", "fastest s", "ratio to python + requests"]
    print(format_table(headers, table, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
