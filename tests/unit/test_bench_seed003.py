"""``benchmarks.bench_seed003``'s pieces that need no server: the profile, the search, the cgroup."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from benchmarks._seed003 import Cgroup, capacity_search, stages_argument
from ligeiro.bench import Stage, parse_stages
from ligeiro.bench._payload import render_template

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def test_the_seed_profile_is_k6s_scenario_scaled() -> None:
    # startRate 100/min held 2 min, then ramps to 4000, 8000, 16000/min over 2 min each.
    assert parse_stages(stages_argument(1)) == [
        Stage(0.0, 100 / 60), Stage(120.0, 100 / 60), Stage(120.0, 4000 / 60),
        Stage(120.0, 8000 / 60), Stage(120.0, 16000 / 60),
    ]  # fmt: skip
    assert stages_argument(8) == "0s:100/m,15s:100/m,15s:4000/m,15s:8000/m,15s:16000/m"


def test_the_seed_template_stays_within_iris_ranges() -> None:
    import json

    from benchmarks._seed003 import SEED_TEMPLATE, V2_TEMPLATE

    ranges = {"sepal_length": (4.3, 7.9), "sepal_width": (2, 4.4),
              "petal_length": (1, 6.9), "petal_width": (0.1, 2.5)}  # fmt: skip
    for body in render_template(SEED_TEMPLATE, 100):
        row = json.loads(body)
        assert all(low <= row[k] <= high for k, (low, high) in ranges.items())
    (tensor,) = json.loads(render_template(V2_TEMPLATE, 1)[0])["inputs"]
    assert tensor["shape"] == [1, 4]
    assert all(low <= v <= high for v, (low, high) in zip(tensor["data"], ranges.values()))


@dataclass
class FakeLoad:
    """A server that answers every rate up to ``capacity_rpm`` within 5 ms, and no more."""

    capacity_rpm: float
    client_bound_from_rpm: float = float("inf")
    rates: list[float] = field(default_factory=list)

    def run(self, mode: Sequence[str], json_path: Path) -> dict[str, object]:
        rpm = float(mode[1]) * 60
        self.rates.append(rpm)
        held = rpm <= self.capacity_rpm
        return {"levels": [{
            "latency_ms": {"p95": 5.0 if held else 900.0}, "error_count": 0,
            "errors": {}, "client_cpu": 0.95 if rpm >= self.client_bound_from_rpm else 0.1,
            "is_client_bound": rpm >= self.client_bound_from_rpm,
        }]}  # fmt: skip


def test_capacity_search_doubles_then_bisects(tmp_path: Path) -> None:
    load = FakeLoad(capacity_rpm=100_000)
    found = capacity_search(load, 1.0, 2, tmp_path, settle_s=0)  # type: ignore[arg-type]
    assert [round(r) for r in load.rates] == [16000, 32000, 64000, 128000, 96000, 112000]
    assert (found["highest_held_rpm"], found["first_failed_rpm"]) == (96000, 112000)
    assert not found["generator_bound"]


def test_capacity_search_halves_when_the_top_stage_fails(tmp_path: Path) -> None:
    load = FakeLoad(capacity_rpm=3_000)
    found = capacity_search(load, 1.0, 1, tmp_path, settle_s=0)  # type: ignore[arg-type]
    assert [round(r) for r in load.rates] == [16000, 8000, 4000, 2000, 3000]
    assert (found["highest_held_rpm"], found["first_failed_rpm"]) == (3000, 4000)


def test_capacity_search_stops_where_the_generator_is_the_bottleneck(tmp_path: Path) -> None:
    load = FakeLoad(capacity_rpm=10**7, client_bound_from_rpm=64_000)
    found = capacity_search(load, 1.0, 2, tmp_path, settle_s=0)  # type: ignore[arg-type]
    assert [round(r) for r in load.rates] == [16000, 32000, 64000]
    assert found["generator_bound"]
    assert found["highest_held_rpm"] == 64000


def test_cgroup_writes_the_limits_and_moves_the_server_in(tmp_path: Path) -> None:
    # Plain folders stand in for the cgroup v1 mounts: the same files get written.
    for controller in ("cpu", "cpuacct", "memory"):
        (tmp_path / controller).mkdir()
    with Cgroup("seed003-test", root=tmp_path) as group:
        cpu = tmp_path / "cpu" / "seed003-test"
        assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
        assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
        memory = tmp_path / "memory" / "seed003-test"
        assert (memory / "memory.limit_in_bytes").read_text() == str(128 * 2**20)
        # The shell writes its pid, then execs the command in the same process.
        done = subprocess.run(
            group.wrap(["sh", "-c", "echo $$"]), capture_output=True, text=True, check=True
        )
        for controller in ("cpu", "cpuacct", "memory"):
            procs = tmp_path / controller / "seed003-test" / "cgroup.procs"
            assert procs.read_text().strip() == done.stdout.strip()
        for controller in ("cpu", "cpuacct", "memory"):
            (tmp_path / controller / "seed003-test" / "cgroup.procs").unlink()
        assert (cpu / "cpu.shares").read_text() == "16384"
        for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"):
            (cpu / name).unlink()
        (memory / "memory.limit_in_bytes").unlink()
    assert not (tmp_path / "cpu" / "seed003-test").exists()  # removed on exit
