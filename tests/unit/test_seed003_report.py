"""``bench_seed003``'s report from a recorded run: tables, the kept-up lines, the SVG panels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks._seed003_report import render

if TYPE_CHECKING:
    from pathlib import Path


def _level(sent: int, p95: float, errors: dict[str, int] | None = None, **more: Any) -> dict[str, Any]:
    errors = errors or {}
    return {"sent": sent, "ok": sent - sum(errors.values()), "errors": errors,
            "error_count": sum(errors.values()), "latency_ms": {"p95": p95, "p99": p95 * 2},
            "client_cpu": 0.1, "is_client_bound": False, **more}  # fmt: skip


def _server(name: str, p95s: list[float], held: float, **more: Any) -> dict[str, Any]:
    stages = [_level(n, p95, duration_s=15.0) for n, p95 in zip((25, 512, 1500, 3000), p95s)]
    windows = [_level(100, 5.0, duration_s=2.5) for _ in range(24)]
    return {
        "server": name, "route": "/predict", "memory_limit": 128 * 2**20,
        "limits": "cgroup v1: ...", "startup_s": 1.0, "peak_rss_bytes": 90 * 2**20,
        "stages": {"meta": {"started_unix": 1_800_000_000.0}, "levels": stages,
                   "windows": windows},
        "series": {"at": [1_800_000_000.0 + t for t in range(61)],
                   "cpu_s": [t * 0.1 for t in range(61)], "rss": [90 * 2**20] * 61},
        "capacity": {"highest_held_rpm": held, "first_failed_rpm": held * 2,
                     "generator_bound": False, "hold_s": 10.0,
                     "levels": [{"rpm": held, "held": True, "level": _level(100, 20.0)}]},
        "cgroup": {"memory_peak_bytes": 50 * 2**20, "oom_kills": 0, "periods": 100,
                   "throttled_periods": 5},
        **more,
    }  # fmt: skip


def test_report_says_who_kept_up_and_draws_the_panels(tmp_path: Path) -> None:
    document = {
        "command": "python -m benchmarks.bench_seed003 --scale 8",
        "machine": {"cpu_model": "AMD EPYC", "nproc": 2, "load_average_1m": 1.0,
                    "kernel": "6.18", "python": "3.11.7"},
        "options": {"scale": "8", "server_cores": "0-1", "load_cores": "0-1"},
        "servers": [
            _server("fastapi-pickle", [20, 30, 250, 900], 3000, memory_limit=512 * 2**20,
                    oom_at_start={"limit": 128 * 2**20, "peak": 128 * 2**20}),
            _server("ligeiro", [2, 2, 3, 4], 96000),
            {"server": "fastapi-onnx", "failed": "server exited"},
        ],
    }  # fmt: skip
    again = {**document, "servers": [_server("fastapi-pickle", [20, 30, 250, 900], 2000),
                                     _server("ligeiro", [2, 2, 3, 4], 80000)]}  # fmt: skip
    text = render(document, tmp_path / "seed003", tmp_path / "seed003.md", [again])
    assert (tmp_path / "seed003.md").read_text() == text
    assert "**8x shorter**" in text
    assert "- **ligeiro** kept up with every stage, to 16,000/min." in text
    assert (
        "- **fastapi-pickle** was OOM-killed while starting under 128 MiB, the seed's limit"
        in text
    )
    assert "not with 8,000/min (p95 250 ms), 16,000/min (p95 900 ms)." in text
    assert "| fastapi-pickle (512 MiB) |" in text
    assert "ligeiro 32x" in text  # 96,000 / 3,000
    assert "- **fastapi-onnx** did not run: server exited" in text
    (repeat_row,) = [line for line in text.splitlines() if "(40x)" in line]
    cells = [cell.strip() for cell in repeat_row.split("|")[1:4]]
    assert cells == ["ligeiro", "96,000 (32x)", "80,000 (40x)"]
    assert "![p95, requests/min, RSS and CPU over time](seed003/panels.svg)" in text
    for name in ("panels.svg", "capacity.svg"):
        svg = (tmp_path / "seed003" / name).read_text()
        assert svg.startswith("<?xml") and "ligeiro" in svg  # text kept as text
