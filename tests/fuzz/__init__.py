"""Fuzzing's shared settings, and the coverage-guided atheris targets (``make fuzz``).

``fuzz_settings(n)`` is what every hypothesis fuzz test runs under: a fixed seed (the
test's ``@seed``), ``n`` examples in ``make test``, and the kept database of found cases
in ``tests/fuzz-db``, replayed first on every run. ``make test`` only reads it;
``make fuzz`` (``LIGEIRO_FUZZ_EXAMPLES`` set) runs ``LIGEIRO_FUZZ_EXAMPLES`` examples
per test and adds what fails to it, for a commit to keep.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

FUZZ_DB = Path(__file__).resolve().parent.parent / "fuzz-db"
LONG = int(os.environ.get("LIGEIRO_FUZZ_EXAMPLES", "0") or 0)
SEED = 21  # issue 21; each test's @seed(SEED)


def fuzz_settings(max_examples: int, *also: HealthCheck) -> settings:
    """Settings for a fuzz test of ``max_examples`` examples (``LIGEIRO_FUZZ_EXAMPLES`` in
    the long mode), replaying and, in the long mode, extending the kept database; the
    health checks ``also`` are suppressed besides "too slow" (a loaded machine)."""
    database = DirectoryBasedExampleDatabase(str(FUZZ_DB))
    return settings(
        max_examples=LONG or max_examples,
        database=database if LONG else ReadOnlyDatabase(database),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, *also],
    )
