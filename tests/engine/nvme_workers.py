"""Rank functions for the NVMe offload tests (``test_engine_nvme_offload``): spawned ranks import them by name."""

from __future__ import annotations

import hashlib
import os

import torch
from engine_workers import _train, config, make_model

import deepspeed


def _offload(device: str, nvme_path: str | None, pipeline: bool = True) -> dict:
    if device == "none":
        return {}
    section: dict = {"device": device}
    if device == "nvme":
        section.update(nvme_path=nvme_path, buffer_count=2, pipeline_read=pipeline, pipeline_write=pipeline)
    return {"offload_optimizer": section}


def _engine(stage: int, device: str, nvme_path: str | None, seed: int = 0, pipeline: bool = True):
    world = deepspeed.comm.get_world_size()
    cfg = config(world, "adamw", stage, aio={"block_size": 4096, "queue_depth": 4, "intra_op_parallelism": 2})
    cfg["zero_optimization"].update(_offload(device, nvme_path, pipeline))
    engine, *_ = deepspeed.initialize(model=make_model(seed), config=cfg)
    return engine


def _full(engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.optimizer.full_state_dict(rank0_only=False).items()}


def train(
    stage: int,
    device: str,
    nvme_path: str | None,
    steps: int,
    save_dir: str | None = None,
    pipeline: bool = True,
):
    """``steps`` steps; optionally save a checkpoint; returns (full parameters, losses, swap files seen)."""
    engine = _engine(stage, device, nvme_path, pipeline=pipeline)
    world = deepspeed.comm.get_world_size()
    losses = _train(engine, steps, world)
    files = _swap_files(nvme_path) if device == "nvme" else []
    if save_dir is not None:
        engine.save_checkpoint(save_dir, client_state={"losses": losses})
    return _full(engine), losses, files, states_in_memory(engine)


def resume(stage: int, device: str, nvme_path: str | None, steps: int, load_dir: str):
    """Load ``load_dir`` into a differently initialised engine and train ``steps`` more."""
    engine = _engine(stage, device, nvme_path, seed=99)
    path, client = engine.load_checkpoint(load_dir)
    assert path is not None
    losses = _train(engine, steps, deepspeed.comm.get_world_size())
    return _full(engine), client["losses"] + losses


def _swap_files(nvme_path: str) -> list[tuple[str, int]]:
    out = []
    for root, _dirs, names in os.walk(nvme_path):
        out += [(os.path.join(root, n), os.path.getsize(os.path.join(root, n))) for n in names]
    return sorted(out)


def states_in_memory(engine) -> int:
    """Bytes of optimizer-state tensors held in memory now."""
    return sum(
        v.numel() * v.element_size()
        for s in engine.optimizer.optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0
    )


def fill_then_step(stage: int, nvme_path: str, save_dir: str):
    """Save; fill ``nvme_path``'s file system; step (the first swap write fails: a rewrite of an existing
    swap file needs no new blocks) and save again. Returns the two errors' messages and a digest of
    ``save_dir`` before and after."""
    engine = _engine(stage, "nvme", nvme_path, pipeline=False)
    world = deepspeed.comm.get_world_size()
    engine.save_checkpoint(save_dir, tag="good")
    deepspeed.comm.barrier()
    before = digest(save_dir)
    filler = os.path.join(nvme_path, f"filler{deepspeed.comm.get_rank()}")
    # Fill the disk. Unbuffered, and the whole block guarded: a buffered file would raise ENOSPC again
    # from close() when it flushes what the failed write left in its buffer.
    try:
        with open(filler, "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 65536)
    except OSError:
        pass
    errors = []
    try:
        _train(engine, 1, world)
    except Exception as exc:  # noqa: BLE001 - the message is what the test checks
        errors.append(f"{type(exc).__name__}: {exc}")
    try:
        engine.save_checkpoint(save_dir, tag="after")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {exc}")
    return errors, before, digest(save_dir), sorted(os.listdir(save_dir))


def corrupt_then_step(stage: int, nvme_path: str):
    """Train 1 step, truncate this rank's swap files, step again: returns the error message."""
    engine = _engine(stage, "nvme", nvme_path)
    _train(engine, 1, deepspeed.comm.get_world_size())
    for path, _size in _swap_files(nvme_path):
        os.truncate(path, 0)
    try:
        _train(engine, 1, deepspeed.comm.get_world_size())
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def build_error(stage: int, nvme_path: str | None) -> str | None:
    try:
        _engine(stage, "nvme", nvme_path)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _dirs, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _vm_data() -> int:
    """This process's private writable memory now (/proc/self/status VmData: what RLIMIT_DATA bounds)."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmData:"))
    return int(line.split()[1]) * 1024


LIMITED_LAYERS = 32  # Linear(512, 512) layers: 64 MiB of Adam states, 32 MiB of gradients


def _zero_infinity(device: str, nvme_path: str | None) -> dict:
    """Stage 3 with parameters and optimizer states on ``device``, one Linear per shard unit."""
    zero: dict = {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,
        "stage3_max_reuse_distance": 0,  # each unit reshards after its forward (DeepSpeed's default keeps
        # all of them gathered until backward: the whole model in memory)
        "reduce_bucket_size": 300_000,
        "stage3_prefetch_bucket_size": 300_000,
        **_offload(device, nvme_path),
    }
    zero["offload_param"] = {"device": device}
    if device == "nvme":
        zero["offload_param"].update(nvme_path=nvme_path, buffer_count=2, max_in_cpu=0)
    return zero


def _limited_engine(device: str, nvme_path: str | None, stage: int = 2):
    """A model whose Adam states take 64 MiB (its fp32 weights 32 MiB); returns (engine, the states'
    bytes, one input). Stage 3: the weights are offloaded to ``device`` too."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(LIMITED_LAYERS)])
    states = 2 * 4 * sum(p.numel() for p in model.parameters())
    zero = (
        _zero_infinity(device, nvme_path)
        if stage == 3
        else {"stage": 2, "reduce_bucket_size": 300_000, **_offload(device, nvme_path)}
    )
    cfg = {
        "train_batch_size": 4,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
        "aio": {"block_size": 1 << 20, "queue_depth": 4, "intra_op_parallelism": 1},
        "zero_optimization": zero,
    }
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    return engine, states, torch.randn(2, 512, generator=torch.Generator().manual_seed(1))


def _micro_steps(engine, x: torch.Tensor, count: int) -> list[float]:
    losses = []
    for _ in range(count):
        loss = engine(x).square().mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def _exact_heap() -> None:
    """Have glibc map every allocation of 128 KiB or more on its own and unmap it when freed. By default
    the threshold grows with what was freed (up to 32 MiB), and freed heap stays in the process: the
    gradients freed at a step would count as room under the cap, hiding what a save or load holds."""
    import ctypes

    m_mmap_threshold = -3  # mallopt's M_MMAP_THRESHOLD; setting it stops the growth
    ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 128 << 10)


def _cap(headroom: int) -> None:
    import resource

    limit = _vm_data() + headroom
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))


def _uncap() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def train_under_limit(
    device: str,
    nvme_path: str | None,
    headroom: int,
    steps: int = 3,
    save_dir: str | None = None,
    load_dir: str | None = None,
    stage: int = 2,
):
    """Build the 64 MiB-states model, cap this rank's private writable memory (RLIMIT_DATA) at what it
    uses then plus ``headroom`` bytes, and train ``steps`` optimizer steps under the cap; with
    ``load_dir``, load that checkpoint under the cap first; with ``save_dir``, save one under the cap
    after. Returns (error or None, the states' bytes, the headroom, the losses, the weights)."""
    _exact_heap()
    engine, states, x = _limited_engine(device, nvme_path, stage)
    # before the cap: one micro-step (not a boundary, so no optimizer states yet), so the gradient
    # buffers and the I/O threads' stacks exist already; before a load, a whole step (states made on
    # NVMe), as the load replaces them all. Stage 3 frees its gradients at each step (a cap taken while
    # they exist would count them as room): always a whole step, the headroom covering them.
    warm = 2 if load_dir or stage == 3 else 1
    losses = _micro_steps(engine, x, warm)
    if load_dir:
        losses = []
    _cap(headroom)
    try:
        if load_dir:
            path, _ = engine.load_checkpoint(load_dir)
            assert path is not None
        losses += _micro_steps(engine, x, 2 * steps - (0 if load_dir else warm))
        if save_dir:
            engine.save_checkpoint(save_dir)
    except (RuntimeError, MemoryError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}", states, headroom, losses, None
    finally:
        _uncap()
    return None, states, headroom, losses, _full(engine)


def exp_avgs(stage: int, device: str, nvme_path: str | None, steps: int = 2):
    """``safe_get_full_optimizer_state(p, 'exp_avg')`` for every parameter after ``steps`` steps, and the
    error ``safe_set_full_optimizer_state`` raises (None if it works)."""
    from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state

    engine = _engine(stage, device, nvme_path)
    _train(engine, steps, deepspeed.comm.get_world_size())
    out = {n: safe_get_full_optimizer_state(p, "exp_avg") for n, p in engine.module.named_parameters()}
    first = next(iter(engine.module.parameters()))
    try:
        safe_set_full_optimizer_state(first, out[next(iter(out))], "exp_avg")
        err = None
    except NotImplementedError as exc:
        err = str(exc)
    return out, err
