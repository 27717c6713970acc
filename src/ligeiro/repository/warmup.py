"""Moved to ``ligeiro.warmup`` (the warm-up file is a V2 request: protocol's, not ours).

Kept only while ``web/site.py`` still imports ``generated_sample`` and ``sample`` from
here; delete this file once that import reads ``from ..warmup import ...``.
"""

from __future__ import annotations

from ..warmup import generated_sample as generated_sample
from ..warmup import sample as sample

__all__ = ["generated_sample", "sample"]
