"""The ``[batching]`` section of a model's ``config.toml`` (also settable per server).

Kept apart from the batcher so that settings and config parsing do not import numpy
or asyncio.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["BatchingPolicy"]


class BatchingPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How a model version's requests are queued, batched and run.

    A model without ``[batching]`` runs each request on the event loop as it arrives.
    With it, requests that arrive while the model is busy queue and run together as
    one batch (docs/adr/0004-batching.md).

    Attributes:
        max_batch_size: rows per run; 1 queues and offloads without batching, 0 turns
            the section off (useful to override a model's config from the server).
        max_queue_delay_us: how long a request may wait for others to fill a batch
            while a run slot is free but another batch is still running. An idle model
            never waits: a request that finds nothing running runs at once.
        preferred_batch_sizes: with ``instances > 1``, a batch this size (or more)
            runs without waiting for the delay.
        max_queue_size: requests waiting at most; beyond, the server answers 429 /
            RESOURCE_EXHAUSTED.
        instances: batches that run at once, each on its own thread.
        run_on: where a batch runs. ``"thread"``: on the model's own threads, so the
            event loop keeps parsing while the model computes (worth it when the worker
            has a spare core). ``"loop"``: on the event loop itself, which saves the hop
            to a thread and back (tens to hundreds of µs) when there is no spare core
            to gain: the requests that arrive during a run are read and batched right
            after it. ``"auto"`` (default): ``"thread"`` when the worker runs ONNX
            Runtime on more than one thread or ``instances > 1``, else ``"loop"``.
        idle_on_loop: with batches on a thread, a request that finds the model idle
            with nothing queued runs on the event loop instead, while the model's lone
            runs take under 20 ms: at one request at a time the hop to the thread and
            back is pure cost. Under bursts such requests then wait in the socket
            buffers, as with ``"loop"``, rather than in the queue (so ``max_queue_size``
            and timeouts apply later); hence off by default.
    """

    max_batch_size: Annotated[int, msgspec.Meta(ge=0)]
    max_queue_delay_us: Annotated[int, msgspec.Meta(ge=0)] = 0
    preferred_batch_sizes: list[Annotated[int, msgspec.Meta(gt=0)]] = []
    max_queue_size: Annotated[int, msgspec.Meta(gt=0)] = 1024
    instances: Annotated[int, msgspec.Meta(gt=0)] = 1
    run_on: Literal["auto", "loop", "thread"] = "auto"
    idle_on_loop: bool = False

    def __post_init__(self) -> None:
        too_big = [n for n in self.preferred_batch_sizes if n > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
            )
        if self.run_on == "loop" and self.instances > 1:
            raise ValueError(
                f"run_on = 'loop' runs one batch at a time; instances is {self.instances}"
            )

    def runs_on_thread(self, runtime_threads: int) -> bool:
        """Whether batches run off the event loop (resolving ``"auto"``)."""
        if self.run_on == "auto":
            return runtime_threads > 1 or self.instances > 1
        return self.run_on == "thread"
