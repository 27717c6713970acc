"""Fuzzing's shared settings, and the coverage-guided atheris targets (``make fuzz``).

``@fuzz(n)`` is what every hypothesis fuzz test runs under. In ``make test``: ``n``
examples from a fixed seed (hypothesis then uses no database), plus the test's
``@example``s. In ``make fuzz`` (``FUZZ_EXAMPLES`` set): that many examples from a new
seed each run, with the kept database of found cases in ``tests/fuzz-db``: what fails
is written there and replayed first on the next run, until a fix makes it pass; keep
it as an ``@example`` then, for ``make test``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, seed, settings
from hypothesis.database import DirectoryBasedExampleDatabase

FUZZ_DB = Path(__file__).resolve().parent.parent / "fuzz-db"
LONG = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)
SEED = 21  # issue 21


def fuzz(max_examples: int, *also: HealthCheck) -> Callable[[Any], Any]:
    """Settings (and, in ``make test``, the seed) for a fuzz test of ``max_examples``
    examples; the health checks ``also`` are suppressed besides "too slow" (a loaded
    machine is no failure) and "data too large"."""
    configured = settings(
        max_examples=LONG or max_examples,
        database=DirectoryBasedExampleDatabase(str(FUZZ_DB)) if LONG else None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, *also],
    )

    def apply(test: Any) -> Any:
        test = configured(test)
        return test if LONG else seed(SEED)(test)

    return apply
