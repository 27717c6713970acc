"""``bench_seed003``'s report: the seed's four panels as SVG, the tables, docs/seed003.md."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._harness import format_table
from ._seed003 import CPU_PERIOD_US, CPU_QUOTA_US, P95_LIMIT_MS, SEED_STAGES, SHARES, Series

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["render"]

_COLORS = {"fastapi-pickle": "#d95f02", "fastapi-onnx": "#7570b3", "ligeiro": "#1b9e77",
           "ligeiro-v2": "#66a61e", "mlserver": "#e7298a"}
_STAGE_NAMES = [f"{rpm:,.0f}/min" for _, rpm in SEED_STAGES]


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _windows(server: dict[str, Any]) -> list[dict[str, Any]]:
    """Each window of the stages run with its wall-clock span, CPU and RSS."""
    report = server["stages"]
    start = report["meta"]["started_unix"]
    series = Series(**server["series"])
    out = []
    offset = 0.0
    for window in report["windows"]:
        begin, end = start + offset, start + offset + window["duration_s"]
        out.append({
            "t": offset + window["duration_s"] / 2,
            "p95": window["latency_ms"].get("p95"),
            "rpm": window["ok"] / window["duration_s"] * 60,
            "cpu": series.cpu_between(begin, end),
            "rss": series.rss_peak(begin, end),
        })  # fmt: skip
        offset += window["duration_s"]
    return out


def _stage_rows(server: dict[str, Any]) -> list[dict[str, Any]]:
    report = server["stages"]
    series = Series(**server["series"])
    begin = report["meta"]["started_unix"]
    rows = []
    for name, level in zip(_STAGE_NAMES, report["levels"], strict=True):
        end = begin + level["duration_s"]
        p95 = level["latency_ms"].get("p95")
        kept_up = not level["error_count"] and p95 is not None and p95 <= P95_LIMIT_MS
        rows.append({
            "stage": name, "offered": level["sent"] / level["duration_s"] * 60,
            "answered": level["ok"] / level["duration_s"] * 60, "p95": p95,
            "p99": level["latency_ms"].get("p99"), "errors": level["errors"],
            "cpu": series.cpu_between(begin, end), "rss": series.rss_peak(begin, end),
            "kept_up": kept_up,
        })  # fmt: skip
        begin = end
    return rows


def _panels(servers: list[dict[str, Any]], path: Path, scale: float) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    mpl.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "seed003", "font.size": 9})
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex=True)
    panels = [("p95", "p95 latency (ms)", True), ("rpm", "requests/min answered", False),
              ("rss", "memory: RSS (MiB)", False), ("cpu", "CPU (cores; quota 0.5)", False)]  # fmt: skip
    ends, t = [], 0.0
    for seconds, _ in SEED_STAGES:
        t += seconds / scale
        ends.append(t)
    for server in servers:
        if "stages" not in server:
            continue
        points = _windows(server)
        xs = [p["t"] for p in points]
        for axis, (key, _, _) in zip(axes.flat, panels, strict=True):
            ys = [p[key] for p in points]
            if key == "rss":
                ys = [None if y is None else y / 2**20 for y in ys]
            axis.plot(xs, [math.nan if y is None else y for y in ys], marker=".",
                      color=_COLORS.get(server["server"]), label=_label(server))  # fmt: skip
    for axis, (_, title, is_log) in zip(axes.flat, panels, strict=True):
        axis.set_title(title)
        if is_log:
            axis.set_yscale("log")
        for end in ends[:-1]:
            axis.axvline(end, color="#bbb", linewidth=0.8)
        axis.grid(alpha=0.3)
    for axis in (axes[0][1], axes[1][0], axes[1][1]):
        axis.set_ylim(bottom=0)
    axes[1][1].set_ylim(top=max(0.55, axes[1][1].get_ylim()[1]))  # the quota in view
    axes[1][0].axhline(128, color="#999", linestyle="--", linewidth=0.8)  # the memory limit
    axes[1][1].axhline(0.5, color="#999", linestyle="--", linewidth=0.8)
    axes[0][0].axhline(P95_LIMIT_MS, color="#999", linestyle="--", linewidth=0.8)
    for axis in axes[1]:
        axis.set_xlabel(f"seconds since the load started (stages {scale:g}x shorter than the seed's)"
                        if scale != 1 else "seconds since the load started")  # fmt: skip
    axes[0][1].legend(loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def _capacity_plot(servers: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.6))
    for server in servers:
        levels = sorted(server.get("capacity", {}).get("levels", []), key=lambda x: x["rpm"])
        if not levels:
            continue
        xs = [x["rpm"] for x in levels]
        ys = [x["level"]["latency_ms"].get("p95", math.nan) for x in levels]
        axis.plot(xs, ys, marker="o", color=_COLORS.get(server["server"]), label=server["server"])
    axis.axhline(P95_LIMIT_MS, color="#999", linestyle="--", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("requests/min offered (constant rate)")
    axis.set_ylabel("p95 latency (ms)")
    axis.set_title("Past the seed's top stage: p95 against rate, half a CPU each")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "0"


def _label(server: dict[str, Any]) -> str:
    """The server's name, with its memory limit when it is not the seed's 128 MiB."""
    limit = server.get("memory_limit")
    return server["server"] + ("" if limit in (None, 128 * 2**20) else f" ({limit / 2**20:.0f} MiB)")


def _kept_up_line(server: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    name = server["server"]
    held = [r["stage"] for r in rows if r["kept_up"]]
    missed = [f"{r['stage']} ({_why(r)})" for r in rows if not r["kept_up"]]
    prefix = f"- **{name}**"
    if "oom_at_start" in server:
        limit = server["oom_at_start"]["limit"] / 2**20
        prefix += (f" was OOM-killed while starting under {limit:.0f} MiB, the seed's limit: "
                   f"it served nothing there. Under {server['memory_limit'] / 2**20:.0f} MiB "
                   "(the same half CPU) it")  # fmt: skip
    if not missed:
        return f"{prefix} kept up with every stage, to {rows[-1]['stage']}."
    return f"{prefix} kept up with {', '.join(held) or 'no stage'}; not with {', '.join(missed)}."


def _why(row: dict[str, Any]) -> str:
    if row["errors"]:
        return f"{sum(row['errors'].values()):,} requests failed"
    return f"p95 {row['p95']:.0f} ms"


def render(
    document: dict[str, Any],
    plots: Path,
    markdown: Path | None,
    repeats: Sequence[dict[str, Any]] = (),
) -> str:
    """The Markdown report; the SVG panels are written to ``plots``.

    ``repeats`` are other runs' documents: their capacities go in a table beside this one's.
    """
    servers = [s for s in document["servers"] if "stages" in s]
    scale = float(document["options"]["scale"])
    machine = document["machine"]
    _panels(servers, plots / "panels.svg", scale)
    has_capacity = any("capacity" in s for s in servers)
    if has_capacity:
        _capacity_plot(servers, plots / "capacity.svg")
    relative = plots.name if markdown is None else _relative(plots, markdown.parent)
    stage_rows = []
    lines_kept = []
    for server in servers:
        rows = _stage_rows(server)
        lines_kept.append(_kept_up_line(server, rows))
        stage_rows += [[_label(server), r["stage"], f"{r['offered']:,.0f}", f"{r['answered']:,.0f}",
                        _fmt(r["p95"], ".2f"), _fmt(r["p99"], ".2f"), _errors(r["errors"]),
                        _fmt(r["cpu"], ".2f"), _fmt(None if r["rss"] is None else r["rss"] / 2**20, ".0f"),
                        "yes" if r["kept_up"] else "**no**"] for r in rows]  # fmt: skip
    first = servers[0]["stages"]["meta"] if servers else {}
    stages = ", ".join(f"{rpm:,.0f}/min over {s / scale:g} s" for s, rpm in SEED_STAGES)
    out = [
        "# Seed 003, reproduced: FastAPI + pickle, FastAPI + ONNX and ligeiro"
        + (" (and MLServer)" if any(s["server"] == "mlserver" for s in servers) else "")
        + " at half a CPU",
        "",
        f"Measured {datetime.fromtimestamp(first.get('started_unix', 0), UTC):%Y-%m-%d %H:%M} UTC "
        f"on {machine['cpu_model']} ({machine['nproc']} cores, shared; 1-min load "
        f"{machine['load_average_1m']:.2f} at start), Linux {machine['kernel']}, Python "
        f"{machine['python']}. Command:",
        "",
        f"    {document['command']}",
        "",
        f"Limits: {_limits(servers)} Each server runs alone, in turn, on cores "
        f"{document['options']['server_cores']}; the load generator (`ligeiro bench`, one "
        f"process) on cores {document['options']['load_cores']}. The machine is shared: "
        "other jobs ran beside this one, and a quota does not keep them off the cores, so "
        "single windows spike.",
        f"Profile: `ligeiro bench --stages` with the seed's k6 scenario — 100/min held, then "
        f"linear ramps — {stages}"
        + (f" (**{scale:g}x shorter** than the seed's 2 min per stage)." if scale != 1 else ".")
        + " Each request is a fresh draw of the seed's payload (`--template`, every feature "
        "uniform within iris' range, 1,000 bodies sent in turn). Latency runs from each "
        "request's scheduled time (open loop, as k6's arrival-rate executors).",
        "",
        f"![p95, requests/min, RSS and CPU over time]({relative}/panels.svg)",
        "",
        "## Per stage",
        "",
        "A server *kept up* with a stage when it answered every request 2xx with p95 ≤ "
        f"{P95_LIMIT_MS:g} ms. CPU is the cgroup's average over the stage (cores), RSS the "
        "process tree's peak.",
        "",
        format_table(["server", "stage (ramp to)", "offered/min (mean)", "answered/min", "p95 ms",
                      "p99 ms", "errors", "CPU", "RSS MiB", "kept up"], stage_rows,
                     markdown=True),  # fmt: skip
        "",
        *lines_kept,
        *(f"- **{s['server']}** did not run: {s['failed'].splitlines()[0]}"
          for s in document["servers"] if "failed" in s),  # fmt: skip
    ]
    if has_capacity:
        out += ["", *_capacity_section(servers, relative)]
    if repeats:
        out += ["", *_repeats_section([document, *repeats])]
    out += ["", *_memory_section(servers)]
    text = "\n".join(out) + "\n"
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    return text


def _limits(servers: list[dict[str, Any]]) -> str:
    fallback = [s["limits"] for s in servers if s["limits"].startswith("no cgroup")]
    if fallback:
        return f"**{fallback[0]}**: half a CPU was not enforced."
    return (f"a cgroup v1 per server, `cpu.cfs_quota_us` {CPU_QUOTA_US:,} per "
            f"`cpu.cfs_period_us` {CPU_PERIOD_US:,} (docker's `cpus: 0.5`) and "
            "`memory.limit_in_bytes` 128 MiB (no swap on this machine), except where the "
            f"tables name another memory limit; `cpu.shares` {SHARES:,} for the server and "
            "for the load generator (no limit there), so that other jobs on this shared "
            "machine do not take the half CPU, as a Kubernetes CPU request would guarantee.")  # fmt: skip


def _capacity_section(servers: list[dict[str, Any]], relative: str) -> list[str]:
    base = next((s["capacity"]["highest_held_rpm"] for s in servers
                 if s["server"] == "fastapi-pickle" and "capacity" in s), None)  # fmt: skip
    rows = []
    for server in servers:
        capacity = server.get("capacity")
        if capacity is None:
            continue
        held = capacity["highest_held_rpm"]
        best = next((x["level"] for x in capacity["levels"] if x["rpm"] == held), None)
        rows.append([
            _label(server),
            "-" if held is None else f"{held:,.0f}" + (" (generator-bound)" if capacity["generator_bound"] else ""),
            _fmt(capacity["first_failed_rpm"], ",.0f"),
            _fmt(best["latency_ms"].get("p95") if best else None, ".2f"),
            "-" if best is None else f"{best['client_cpu']:.0%}",
            "-" if held is None or not base else f"{held / base:.1f}x",
        ])  # fmt: skip
    hold = servers[0]["capacity"]["hold_s"] if servers and "capacity" in servers[0] else "-"
    return [
        "## Past the top stage: capacity under half a CPU",
        "",
        f"Constant rates of {hold} s each (`ligeiro bench --rate`), from 16,000/min doubled "
        f"until p95 passed {P95_LIMIT_MS:g} ms or a request failed (halved when 16,000/min "
        "already failed), then bisected twice. *Highest held* is the largest rate answered "
        "in full with p95 within the limit; *generator-bound* means the load generator used "
        "over 90 % of its core there, so the server's capacity is at least that.",
        "",
        format_table(["server", "highest held /min", "first failed /min", "p95 ms there",
                      "generator CPU there", "vs fastapi-pickle"], rows, markdown=True),  # fmt: skip
        "",
        *([_ratio_line(servers, base), ""] if base else []),
        f"![p95 against rate]({relative}/capacity.svg)",
    ]


def _repeats_section(documents: Sequence[dict[str, Any]]) -> list[str]:
    """Highest rate held per server in each run, and its multiple of fastapi-pickle's."""
    names = [s["server"] for s in documents[0]["servers"]]
    heads, columns = ["server"], []
    for number, document in enumerate(documents, 1):
        servers = {s["server"]: s for s in document["servers"]}
        started = next((s["stages"]["meta"]["started_unix"] for s in servers.values()
                        if "stages" in s), 0)  # fmt: skip
        heads.append(f"run {number}: {datetime.fromtimestamp(started, UTC):%H:%M} UTC, "
                     f"load {document['machine']['load_average_1m']:.1f}")  # fmt: skip
        held = {n: s.get("capacity", {}).get("highest_held_rpm") for n, s in servers.items()}
        base = held.get("fastapi-pickle")
        columns.append([
            "-" if held.get(n) is None else f"{held[n]:,.0f}"
            + (f" ({held[n] / base:.0f}x)" if base and n != "fastapi-pickle" else "")
            for n in names
        ])  # fmt: skip
    rows = [[name, *(column[i] for column in columns)] for i, name in enumerate(names)]
    return [
        "## The same search, run again",
        "",
        "Highest rate held (requests/min) and its multiple of fastapi-pickle's, per run, "
        "with the machine's 1-minute load average at the run's start (2 cores, shared):",
        "",
        format_table(heads, rows, markdown=True),
    ]


def _ratio_line(servers: list[dict[str, Any]], base: float) -> str:
    others = [(s["server"], s["capacity"]["highest_held_rpm"]) for s in servers
              if "capacity" in s and s["server"] != "fastapi-pickle"]  # fmt: skip
    parts = [f"{name} {held / base:.0f}x" for name, held in others if held]
    return ("Highest rate held, as a multiple of fastapi-pickle's: " + ", ".join(parts) + "."
            if parts else "")  # fmt: skip


def _memory_section(servers: list[dict[str, Any]]) -> list[str]:
    rows = []
    for server in servers:
        cgroup = server.get("cgroup", {})
        periods = cgroup.get("periods") or 0
        limit = server.get("memory_limit")
        rows.append([
            _label(server), _fmt(None if limit is None else limit / 2**20, ".0f"),
            "yes" if "oom_at_start" in server else "no",
            f"{server['startup_s']:.1f}", f"{server['peak_rss_bytes'] / 2**20:.0f}",
            _fmt(cgroup["memory_peak_bytes"] / 2**20 if cgroup else None, ".0f"),
            str(cgroup.get("oom_kills", "-")),
            f"{cgroup['throttled_periods'] / periods:.0%}" if periods else "-",
        ])  # fmt: skip
    return [
        "## Memory and throttling over the whole run",
        "",
        "Peak RSS is the process tree's high-water mark (VmHWM). The cgroup's peak is what "
        "the limit judges: memory first touched inside the group (shared libraries already "
        "in the page cache are charged elsewhere, so it can be below RSS). *Throttled* is "
        "the share of 100 ms periods in which the server used up its 50 ms.",
        "",
        format_table(["server", "memory limit MiB", "OOM-killed at 128 MiB", "start-up s",
                      "peak RSS MiB", "cgroup peak MiB", "OOM kills", "throttled periods"], rows,
                     markdown=True),  # fmt: skip
    ]


def _relative(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target, start)
