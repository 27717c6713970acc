"""Iris end to end: ligeiro beside the seed article's two FastAPI servers, in rounds.

The seed article (003) served one sklearn pipeline three ways and compared them under
load. This runs its two Python servers (FastAPI + pickle, FastAPI + ONNX Runtime), the
raw Python floor (``baselines/raw_floor.py``: uvloop + httptools + orjson + ONNX Runtime,
no protocol) and ligeiro on the same model, each as one process on core 0 with wrk on core 1, and prints
throughput, latency, CPU per request, peak memory, start-up time and ligeiro's
throughput ratio to each baseline.

The machine is shared and noisy (the same server measured 7,001 req/s in one run and
3,925 in the next), so the run is made of rounds (``--rounds``, default 3). Each round
starts every server, one after another, and keeps them all up; then, for each
concurrency, loads them back to back, so that a ratio compares runs seconds apart. The
order rotates every round. Rows show the round with the median req/s and the range; a
ratio is the median over rounds of the ratio measured within one round (``_rounds.py``).

Every server's answer to the payload is checked once before it is loaded, so a server
that answers errors fast is never mistaken for a fast server.

Run: ``python -m benchmarks.bench_iris [--rounds 3] [--duration 5] [--warmup 1]
[--concurrency 1,16,64] [--servers ligeiro-v2,fastapi-onnx] [--json PATH]
[--markdown PATH]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ._harness import (
    LOAD_CORE,
    Machine,
    add_duration_options,
    add_report_options,
    ensure_tools,
    exclusive_machine,
    format_table,
    int_list,
    machine_info,
    positive_int,
    publish_markdown,
    run_document,
    write_report,
)
from ._iris import PACKAGES, ensure_models
from ._rounds import (
    RESULT_HEADERS,
    Rounds,
    describe_rounds,
    expected_seconds,
    ratio_cell,
    result_rows,
    round_ratios,
    spread_document,
)
from ._targets import Target, run_round, targets

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)


def throughput_ratios(
    measured: Rounds, servers: Sequence[str], all_targets: Mapping[str, Target]
) -> dict[str, dict[int, list[float]]]:
    """Per ligeiro target and baseline, per concurrency, the ratio of req/s in each round."""
    ours = [name for name in servers if not all_targets[name].is_baseline]
    theirs = [name for name in servers if all_targets[name].is_baseline]
    ratios = {
        f"{mine} / {baseline}": round_ratios(measured.runs, mine, baseline)
        for mine in ours
        for baseline in theirs
    }
    for mine in ours:
        other = all_targets[mine].compared_to
        if other is not None and other in servers:
            ratios[f"{mine} / {other}"] = round_ratios(measured.runs, mine, other)
    return ratios


def render(
    measured: Rounds,
    ratios: Mapping[str, Mapping[int, list[float]]],
    options: argparse.Namespace,
    *,
    markdown: bool,
) -> str:
    """The results table, the ratio table, and any failures, as text or Markdown."""
    parts = [
        describe_rounds(options.rounds, options.duration, options.warmup),
        format_table(
            RESULT_HEADERS,
            result_rows(measured, options.servers, options.concurrency),
            markdown=markdown,
        ),
    ]
    if ratios:
        headers = ["req/s ratio: median (range)", *(f"c={c}" for c in options.concurrency)]
        rows = [
            [pair, *(ratio_cell(by_c.get(c, [])) for c in options.concurrency)]
            for pair, by_c in ratios.items()
        ]
        parts.append(format_table(headers, rows, markdown=markdown))
    parts += [
        f"{f.target} failed in round {f.round}: {f.error.splitlines()[0]}"
        for f in measured.failures
    ]
    return "\n\n".join(parts)


def markdown_heading(machine: Machine, command: str, rounds: int) -> str:
    """The context a published table needs: command, machine, versions, date, method."""
    return (
        f"Measured {machine.date} with `{command}` on {machine.summary()}. "
        "Each server is one process pinned to core 0; wrk runs on core 1. "
        f"In each of {rounds} round(s) every server is started and stays up, and at each "
        "concurrency the servers are loaded back to back, in an order rotated every round. "
        "Rows show the round with the median req/s; ratios are the median (and range) of "
        "the ratios measured within each round."
    )


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    names = [name for name, target in targets().items() if target.by_default]
    every = list(targets())
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        default="1,16,64",
        type=int_list,
        help="comma-separated connection counts (default 1,16,64)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="repeat every measurement, rotating the server order; report medians (default 3)",
    )
    add_duration_options(parser)
    parser.add_argument(
        "--servers",
        default=",".join(names),
        type=lambda text: text.split(","),
        help=f"comma-separated subset of {','.join(every)} (default {','.join(names)})",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds a server may take to become ready",
    )
    add_report_options(parser)
    args = parser.parse_args(argv)
    if unknown := set(args.servers) - set(every):
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {every}")
    return args


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "python -m benchmarks.bench_iris",
    report_stem: Path | None = None,
) -> int:
    """Run the benchmark; return 1 when any target failed in any round, so a smoke run notices.

    Args:
        argv: the command-line arguments (default ``sys.argv[1:]``).
        prog: how the user invoked it, recorded with the results.
        report_stem: write ``<stem>.json`` and ``<stem>.md`` unless ``--json`` or
            ``--markdown`` name other paths.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([prog, *argv])
    options = parse_args(argv, prog)
    if report_stem is not None:
        options.json = options.json or report_stem.with_suffix(".json")
        options.markdown = options.markdown or report_stem.with_suffix(".md")
    all_targets = targets()
    selected = [all_targets[name] for name in options.servers]
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_iris needs two cores: one for the server, one for wrk")
    # This process only waits on wrk; keep it off the server's core too.
    os.sched_setaffinity(0, {LOAD_CORE})
    measured = Rounds()
    with exclusive_machine():
        ensure_tools()
        ensure_models()
        machine = machine_info(PACKAGES)
        print(
            f"{options.rounds} round(s) x {len(selected)} server(s) x "
            f"{len(options.concurrency)} concurrencies x ({options.warmup:g} s warm-up + "
            f"{options.duration:g} s): expect about {expected_seconds(options) / 60:.1f} min",
            flush=True,
        )
        started = time.monotonic()
        for round_index in range(options.rounds):
            run_round(round_index, selected, options, measured)
        print(f"done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    ratios = throughput_ratios(measured, options.servers, all_targets)
    print("\n" + render(measured, ratios, options, markdown=False))
    tables = render(measured, ratios, options, markdown=True)
    report = f"{markdown_heading(machine, command, options.rounds)}\n\n{tables}\n"
    publish_markdown(report, options.markdown)
    if options.json:
        document = {
            **run_document("iris", command, machine, options),
            "runs": [dataclasses.asdict(run) for run in measured.runs],
            "startups": [dataclasses.asdict(startup) for startup in measured.startups],
            "failures": [dataclasses.asdict(failure) for failure in measured.failures],
            "ratios": {
                pair: {str(c): spread_document(values) for c, values in by_c.items()}
                for pair, by_c in ratios.items()
            },
        }
        write_report(options.json, json.dumps(document, indent=2) + "\n")
    return 1 if measured.failures else 0


if __name__ == "__main__":
    sys.exit(main())
