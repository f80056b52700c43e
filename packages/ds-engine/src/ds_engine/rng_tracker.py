"""Named accelerator RNG streams: Megatron's "CUDA RNG states tracker", as ``deepspeed.checkpointing``
exposes it (``get_cuda_rng_tracker``, ``model_parallel_cuda_manual_seed``).

Model-parallel code draws dropout masks inside tensor-parallel regions from a stream of its own,
seeded differently on each tensor-parallel rank, and everything else from the default stream, seeded
alike on the ranks that hold the same data. A tracker keeps each named stream's generator state;
``with tracker.fork(name):`` swaps that state into the accelerator's default generator for the block
and keeps where the stream got to. The accelerator is ``ds_accel``'s (the CPU generator on a CPU run).

Activation checkpointing replays these streams too: a recomputed segment starts each stream where its
forward started it (see :func:`replaying_tracked_streams`), so a segment that forks the tracker draws
the same masks twice, as torch already arranges for the default stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ds_accel import get_accelerator

logger = logging.getLogger("ds_engine")

MODEL_PARALLEL_RNG = "model-parallel-rng"  # the stream tensor-parallel regions use (Megatron's name)
MODEL_PARALLEL_SEED_OFFSET = 2718  # model-parallel seed = seed + offset + tensor-parallel rank (Megatron's)


class CudaRNGStatesTracker:
    """Generator states by stream name; DeepSpeed's class name, for any accelerator."""

    def __init__(self) -> None:
        self.states_: dict[str, Any] = {}
        self.seeds_: set[int] = set()

    def reset(self) -> None:
        """Forget every stream."""
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self) -> dict[str, Any]:
        """A copy of the name -> generator state map (the states themselves are not copied)."""
        return dict(self.states_)

    def set_states(self, states: dict[str, Any]) -> None:
        """Replace the map (what :meth:`get_states` returned earlier)."""
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        """Start stream ``name`` from ``seed``; the accelerator's own generator is left as it was."""
        if seed in self.seeds_:
            raise ValueError(f"RNG tracker: seed {seed} is already used by another stream")
        if name in self.states_:
            raise ValueError(f"RNG tracker: a stream named {name!r} already exists")
        accel = get_accelerator()
        before = accel.get_rng_state()
        accel.manual_seed(seed)
        self.states_[name] = accel.get_rng_state()
        accel.set_rng_state(before)
        self.seeds_.add(seed)

    @contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG) -> Iterator[None]:
        """Draw from stream ``name`` inside the block; the default stream resumes afterwards."""
        if name not in self.states_:
            raise KeyError(
                f"RNG tracker: no stream named {name!r} (add it first, e.g. with "
                "model_parallel_cuda_manual_seed)"
            )
        accel = get_accelerator()
        before = accel.get_rng_state()
        accel.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = accel.get_rng_state()
            accel.set_rng_state(before)


_TRACKER = CudaRNGStatesTracker()


def get_cuda_rng_tracker() -> CudaRNGStatesTracker:
    """The process's tracker."""
    return _TRACKER


def _tensor_parallel_rank() -> int:
    # Model parallelism is refused by configure() and the engine, so every rank is tensor-parallel rank 0.
    return 0


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Seed the default stream with ``seed`` and the model-parallel stream with
    ``seed + 2718 + tensor-parallel rank``; replaces ``manual_seed`` in model-parallel code."""
    model_parallel_seed = seed + MODEL_PARALLEL_SEED_OFFSET + _tensor_parallel_rank()
    logger.debug("model-parallel seed %d, data-parallel seed %d", model_parallel_seed, seed)
    _TRACKER.reset()
    get_accelerator().manual_seed(seed)
    _TRACKER.add(MODEL_PARALLEL_RNG, model_parallel_seed)


def model_parallel_reconfigure_tp_seed(seed: int) -> None:
    """Reseed the model-parallel stream (``seed + 2718 + tensor-parallel rank``) in place."""
    with _TRACKER.fork():
        get_accelerator().manual_seed(seed + MODEL_PARALLEL_SEED_OFFSET + _tensor_parallel_rank())


def replaying_tracked_streams(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` for a checkpointed segment: its first run records where every tracked stream
    starts; each later run (the recompute) starts them there again and then puts back the streams
    as they were, so the segment draws the same numbers and code after it is unaffected."""
    start: list[dict[str, Any]] = []

    def run(*args: Any) -> Any:
        if not start:
            start.append(_TRACKER.get_states())
            return function(*args)
        live = _TRACKER.get_states()
        _TRACKER.set_states(dict(start[0]))
        try:
            return function(*args)
        finally:
            _TRACKER.set_states(live)

    return run
