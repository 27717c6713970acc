"""What ``/proc`` says about a server: its process tree, CPU time, memory and sockets.

A server may fork workers, so every reading here covers the whole tree under a pid,
found by walking parent ids, and a worker cannot hide its cost. ``_harness.ServerProcess``
reads CPU and peak memory through these; ``bench_workers`` reads each process's
``smaps_rollup`` and ``pagemap`` to tell shared pages from private ones.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ProcessMemory",
    "children",
    "cpu_ticks",
    "distinct_mib",
    "listening_sockets",
    "process_tree",
    "resident_frames",
    "tree_cpu_s",
    "tree_peak_rss_bytes",
    "tree_rss_bytes",
]

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_BYTES_PER_KIB: Final = 1024


# --- the process tree ---------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name, which may hold spaces or parens."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant, found by walking parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's list: a fork may come from any)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += map(int, Path(task.path, "children").read_text().split())
    return sorted(set(found))


# --- CPU ----------------------------------------------------------------------------------


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of the live tree plus the children it has reaped."""
    ticks = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            # utime, stime, cutime, cstime are fields 14-17; [0] here is field 3.
            ticks += sum(int(value) for value in _stat_fields(pid)[11:15])
    return ticks / _CLOCK_TICKS


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it has gone)."""
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])
    return 0


# --- memory -------------------------------------------------------------------------------


def _tree_status_kib(root: int, field: str) -> int:
    """The sum of one ``/proc/PID/status`` field (``VmHWM:``, ``VmRSS:``) over the tree."""
    total_kib = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field):
                    total_kib += int(line.split()[1])
    return total_kib


def tree_peak_rss_bytes(root: int) -> int:
    """Sum of each live process's high-water resident set (VmHWM), in bytes."""
    return _tree_status_kib(root, "VmHWM:") * _BYTES_PER_KIB


def tree_rss_bytes(root: int) -> int:
    """Resident memory now (VmRSS) summed over ``root``'s process tree, in bytes."""
    return _tree_status_kib(root, "VmRSS:") * _BYTES_PER_KIB


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory from ``/proc/PID/smaps_rollup``, in KiB."""

    pid: int
    role: str  # "single" (one worker, no supervisor), "supervisor" or "worker"
    rss_kib: int
    pss_kib: int
    uss_kib: int  # Private_Clean + Private_Dirty: what its exit would give back

    @classmethod
    def read(cls, pid: int, role: str) -> ProcessMemory:
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0])
        return cls(
            pid=pid,
            role=role,
            rss_kib=fields["Rss"],
            pss_kib=fields["Pss"],
            uss_kib=fields["Private_Clean"] + fields["Private_Dirty"],
        )


_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_MAPPING: Final = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")
_PRESENT: Final = np.uint64(1 << 63)
_PFN_MASK: Final = np.uint64((1 << 55) - 1)


def resident_frames(pid: int) -> np.ndarray:
    """The physical page frames ``pid`` has resident, from ``/proc/PID/pagemap``.

    Only mappings with resident pages (``Rss`` > 0 in smaps) are read. Without
    CAP_SYS_ADMIN the kernel reports every frame as 0.
    """
    frames = []
    start = end = 0
    with Path(f"/proc/{pid}/pagemap").open("rb") as pagemap:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if match := _MAPPING.match(line):
                start, end = int(match[1], 16), int(match[2], 16)
            elif line.startswith("Rss:") and int(line.split()[1]) > 0:
                pagemap.seek(start // _PAGE * 8)
                entries = np.frombuffer(pagemap.read((end - start) // _PAGE * 8), np.uint64)
                frames.append(entries[(entries & _PRESENT) != 0] & _PFN_MASK)
    return np.concatenate(frames) if frames else np.zeros(0, np.uint64)


def distinct_mib(pids: Sequence[int]) -> float | None:
    """Resident memory of ``pids`` with every physical page counted once, in MiB.

    Unlike a sum of PSS, this does not depend on other processes on the machine that
    map the same libraries (PSS divides those pages with them). None when the kernel
    hides frame numbers (not root).
    """
    frames = np.unique(np.concatenate([resident_frames(pid) for pid in pids]))
    if frames.size and not frames.any():
        return None
    return float(frames.size * _PAGE / 2**20)


# --- sockets ------------------------------------------------------------------------------


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on ``port`` (one per worker with SO_REUSEPORT).

    The supervisor's reserved socket is bound but never listens, so it does not count.
    """
    listening = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    listening += 1
    return listening
