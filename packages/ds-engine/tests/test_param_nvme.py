"""ZeRO-3 parameter offload to NVMe (``offload_param.device: nvme``, ``zero.Init(remote_device="nvme")``):
the same numbers as ``offload_param: cpu``, checkpoints that resume either way, parameter shards that
really leave memory, and a clear error for a bad ``nvme_path``. CPU, gloo, 2 ranks."""

from __future__ import annotations

import os
import stat

import pytest
import torch

import ds_comm
from ds_comm.testing import run_distributed
from ds_engine import initialize

WIDTH, LAYERS = 32, 6


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(WIDTH, 1))


def _config(param: str, optimizer: str, path: str | None, keep_gathered: bool = False) -> dict:
    zero: dict = {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,
        # 0: every unit reshards after its forward and gathers again (from its rows) in backward;
        # DeepSpeed's default keeps these small units gathered from forward to backward
        "stage3_max_reuse_distance": 1_000_000_000 if keep_gathered else 0,
        "reduce_bucket_size": WIDTH * WIDTH + WIDTH,  # one Linear per shard unit
        "stage3_prefetch_bucket_size": WIDTH * WIDTH + WIDTH,
    }
    if param != "none":
        zero["offload_param"] = {"device": param}
        if param == "nvme":
            zero["offload_param"].update(nvme_path=path, buffer_count=2, max_in_cpu=0)
    if optimizer != "none":
        zero["offload_optimizer"] = {"device": optimizer}
        if optimizer == "nvme":
            zero["offload_optimizer"].update(nvme_path=path, buffer_count=2)
    return {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}},
        "zero_optimization": zero,
        "aio": {"block_size": 4096, "queue_depth": 4, "intra_op_parallelism": 2},
    }


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step * 10 + ds_comm.get_rank())
    return torch.randn(4, WIDTH, generator=g), torch.randn(4, 1, generator=g)


def _sharded_bytes(engine) -> tuple[int, int]:
    """(bytes of sharded parameter rows in memory, bytes they take when all are in memory)."""
    swapper = engine.optimizer.param_swapper
    total = sum(r.numel() * r.element_size() for u in swapper.units for r in u.rows)
    return swapper.resident_bytes(), total


def _train(engine, first: int, steps: int, watch: list[int] | None = None) -> list[float]:
    losses = []
    for step in range(first, first + steps):
        x, y = _batch(step)
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if watch is not None:
            watch.append(_sharded_bytes(engine)[0])
    return losses


def _full(engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.optimizer.full_state_dict(rank0_only=False).items()}


def _engine(param: str, optimizer: str, path: str | None, seed: int = 0, model=None):
    engine, *_ = initialize(
        model=model if model is not None else _model(seed), config=_config(param, optimizer, path)
    )
    return engine


def _run(param: str, optimizer: str, path: str | None, steps: int = 10, keep_gathered: bool = False):
    engine, *_ = initialize(model=_model(0), config=_config(param, optimizer, path, keep_gathered))
    if not keep_gathered:  # each unit is resharded after forward: backward gathers from the rows
        groups = [
            g for u in engine.optimizer.sharded.units[:-1] for g in u._get_fsdp_state()._fsdp_param_groups
        ]
        assert sum(g._reshard_after_forward for g in groups) >= LAYERS, len(groups)  # the last may stay
    losses = _train(engine, 0, steps)
    return _full(engine), losses


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize(("optimizer", "keep_gathered"), [("cpu", False), ("nvme", False), ("cpu", True)])
def test_param_nvme_equals_param_cpu(optimizer, keep_gathered, tmp_path):
    cpu_params, cpu_losses = run_distributed(_run, 2, 240, args=("cpu", "cpu", None, 10, keep_gathered))[0]
    params, losses = run_distributed(
        _run, 2, 240, args=("nvme", optimizer, str(tmp_path), 10, keep_gathered)
    )[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(cpu_losses), rtol=1e-5, atol=1e-5)
    _close(params, cpu_params)


def _gathered_edit(param: str, path: str | None):
    from ds_zero import GatheredParameters

    engine = _engine(param, "cpu", path)
    losses = _train(engine, 0, 3)
    weight = engine.module[2].weight
    with GatheredParameters([weight], modifier_rank=0):  # the rows come in from NVMe, are written, go out
        seen = weight.detach().clone()
        if ds_comm.get_rank() == 0:
            weight.data.mul_(0.5)
    losses += _train(engine, 3, 3)
    return _full(engine), losses, seen


def test_gathered_parameters_reads_and_writes_swapped_rows(tmp_path):
    cpu_params, cpu_losses, cpu_seen = run_distributed(_gathered_edit, 2, 240, args=("cpu", None))[0]
    params, losses, seen = run_distributed(_gathered_edit, 2, 240, args=("nvme", str(tmp_path)))[0]
    torch.testing.assert_close(seen, cpu_seen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(cpu_losses), rtol=1e-5, atol=1e-5)
    _close(params, cpu_params)


class _Recomputed(torch.nn.Module):
    """A layer whose forward is recomputed in backward (activation checkpointing)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(WIDTH, WIDTH)  # a shard unit: the checkpoint reruns its forward hooks
        self.scale = torch.nn.Parameter(torch.ones(WIDTH))  # makes this module larger than a unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False) * self.scale


def _accumulate_recompute(param: str, path: str | None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[_Recomputed() for _ in range(4)], torch.nn.Linear(WIDTH, 1))
    cfg = _config(param, "cpu", path)
    cfg["gradient_accumulation_steps"] = 2
    engine, *_ = initialize(model=model, config=cfg)
    calls = []
    for layer in model[:4]:
        layer.inner.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    losses = _train(engine, 0, 8)
    assert len(calls) == 2 * 4 * 8, len(calls)  # each unit's forward ran again in backward
    names = {engine.optimizer.sharded.plan.names[id(u)] for u in engine.optimizer.sharded.units}
    assert {f"{i}.inner" for i in range(4)} <= names, names
    return _full(engine), losses


def test_gradient_accumulation_and_activation_checkpointing(tmp_path):
    """Two backwards per step, and units whose forward runs again inside backward."""
    cpu_params, cpu_losses = run_distributed(_accumulate_recompute, 2, 240, args=("cpu", None))[0]
    params, losses = run_distributed(_accumulate_recompute, 2, 240, args=("nvme", str(tmp_path)))[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(cpu_losses), rtol=1e-5, atol=1e-5)
    _close(params, cpu_params)


def _save(param: str, path: str | None, ckpt: str) -> None:
    engine = _engine(param, "cpu", path)
    _train(engine, 0, 5)
    engine.save_checkpoint(ckpt, tag="t5")


def _resume(param: str, path: str | None, ckpt: str):
    engine = _engine(param, "cpu", path, seed=7)
    loaded, _ = engine.load_checkpoint(ckpt, tag="t5")
    assert loaded is not None
    losses = _train(engine, 5, 5)
    return _full(engine), losses


@pytest.mark.parametrize(("save", "load"), [("nvme", "cpu"), ("cpu", "nvme")])
def test_checkpoint_resumes_with_or_without_param_nvme(save, load, tmp_path):
    whole, whole_losses = run_distributed(_run, 2, 240, args=("cpu", "cpu", None))[0]
    swap, ckpt = tmp_path / "swap", tmp_path / "ckpt"
    swap.mkdir()
    run_distributed(_save, 2, 240, args=(save, str(swap), str(ckpt)))
    params, losses = run_distributed(_resume, 2, 240, args=(load, str(swap), str(ckpt)))[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(whole_losses[5:]), rtol=1e-5, atol=1e-5)
    _close(params, whole)


def _checkpoint_residency(path: str, ckpt: str):
    """The most sharded-row bytes in memory at any unit read of a save and of a load, the largest unit's
    bytes, and what stays in memory after each."""
    engine = _engine("nvme", "nvme", path)
    _train(engine, 0, 3)
    swapper = engine.optimizer.param_swapper
    seen: list[int] = []
    ensure = swapper.ensure

    def watched(unit):
        ensure(unit)
        seen.append(swapper.resident_bytes())

    swapper.ensure = watched
    engine.save_checkpoint(ckpt, tag="t")
    during_save, after_save = max(seen), swapper.resident_bytes()
    seen.clear()
    weights = _full(engine)
    engine.load_checkpoint(ckpt, tag="t")
    during_load, after_load = max(seen), swapper.resident_bytes()
    largest = max(sum(r.numel() * r.element_size() for r in u.rows) for u in swapper.units)
    same = all(torch.equal(a, b) for a, b in zip(weights.values(), _full(engine).values()))
    return during_save, after_save, during_load, after_load, largest, same


def test_checkpoints_hold_one_unit_at_a_time(tmp_path):
    """Note [bounded parameter checkpoints]: a save (the gathered module and the optimizer slices) and a
    load (the module, then the optimizer slices) never hold more than one unit's rows (two in the load:
    the root unit is in memory while its children load), and leave none in memory."""
    swap, ckpt = tmp_path / "swap", tmp_path / "ckpt"
    swap.mkdir()
    save, after_save, load, after_load, largest, same = run_distributed(
        _checkpoint_residency, 2, 240, args=(str(swap), str(ckpt))
    )[0]
    assert 0 < save <= largest, (save, largest)
    assert 0 < load <= 2 * largest, (load, largest)
    assert after_save == after_load == 0
    assert same  # the load put back what was saved


def _watch_memory(path: str):
    engine = _engine("nvme", "cpu", path)
    during: list[int] = []
    for unit in engine.optimizer.sharded.units:  # sampled as each unit's forward runs
        unit.register_forward_hook(lambda *_: during.append(_sharded_bytes(engine)[0]))
    stepping: list[int] = []
    inner = engine.optimizer.optimizer  # the torch optimizer: called once per unit at the step
    step = inner.step

    def watched_step(*args, **kwargs):
        stepping.append(_sharded_bytes(engine)[0])
        return step(*args, **kwargs)

    inner.step = watched_step
    between: list[int] = []
    _train(engine, 0, 4, watch=between)
    files = sorted(os.listdir(os.path.dirname(engine.optimizer.param_swapper.units[0].path)))
    return during, stepping, between, _sharded_bytes(engine)[1], files


def test_sharded_parameters_leave_memory(tmp_path):
    during, stepping, between, total, files = run_distributed(_watch_memory, 2, 240, args=(str(tmp_path),))[0]
    assert total > 0 and len(files) == LAYERS + 1, files  # one file per shard unit
    assert max(between) == 0, between  # max_in_cpu 0: every shard is on NVMe between steps
    # during forward, at most the running unit and the one FSDP2 prefetches are in memory
    assert max(during) <= total // 2, (max(during), total)
    # the step runs unit by unit: a unit and the one read ahead, never the model
    assert len(stepping) >= 4 * (LAYERS + 1) and max(stepping) <= total // 2, (stepping, total)


def _local(sd: dict) -> dict[str, torch.Tensor]:
    return {k: getattr(v, "_local_tensor", v).clone() for k, v in sd.items()}


def _plain_state_dict(param: str, path: str | None):
    engine = _engine(param, "cpu", path)
    _train(engine, 0, 3)
    sd = engine.module.state_dict()  # the plain nn.Module call, as a user or client library makes it
    kept = engine.module.state_dict(keep_vars=True)
    snapshot = _local(sd)
    swapped_out = _sharded_bytes(engine)[0] if param == "nvme" else 0
    _train(engine, 3, 2)  # the weights move on; what state_dict returned must not
    after = _local(sd)
    return snapshot, after, swapped_out, all(isinstance(v, torch.nn.Parameter) for v in kept.values())


def test_plain_state_dict_of_swapped_units(tmp_path):
    """``module.state_dict()`` on swapped-out units reads their rows in and returns copies (reading the
    rows' freed storage would be garbage or a crash), and leaves the units on NVMe."""
    want, _, _, _ = run_distributed(_plain_state_dict, 2, 240, args=("cpu", None))[0]
    got, after, swapped_out, params = run_distributed(
        _plain_state_dict, 2, 240, args=("nvme", str(tmp_path))
    )[0]
    assert swapped_out == 0  # max_in_cpu 0: every unit went back to NVMe
    assert params  # keep_vars=True still hands out Parameters
    _close(got, want)
    _close(after, got)  # copies: later steps do not reach them


def _init_nvme(param: str, path: str | None):
    from ds_engine.zero_init import Init

    cfg = _config(param, "cpu", path)
    with Init(config_dict_or_path=cfg, dtype=torch.float32):
        model = _model(0)
    seen = {}
    if param == "nvme":
        p = model[0].weight
        seen = {
            "released": all(q.ds_tensor.untyped_storage().nbytes() == 0 for q in model.parameters()),
            "files": len(os.listdir(os.path.join(path, "ds_zero_params"))),
            "path": os.path.exists(p._ds_nvme_partition[1]),
        }
    engine = _engine(param, "cpu", path, model=model)
    if param == "nvme":  # wrapped: the Init partitions' files are gone, the units' files are there
        seen["left"] = [n for _, _, names in os.walk(path) for n in names if n.startswith("partition")]
    losses = _train(engine, 0, 10)
    return _full(engine), losses, seen


def test_zero_init_on_nvme_trains_like_cpu(tmp_path):
    cpu_params, cpu_losses, _ = run_distributed(_init_nvme, 2, 240, args=("cpu", None))[0]
    params, losses, seen = run_distributed(_init_nvme, 2, 240, args=("nvme", str(tmp_path)))[0]
    assert seen == {"released": True, "files": 2, "path": True, "left": []}, seen  # a folder per rank's store
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(cpu_losses), rtol=1e-5, atol=1e-5)
    _close(params, cpu_params)


def _build_error(path: str | None, init: bool) -> str:
    try:
        if init:
            from ds_engine.zero_init import Init

            with Init(config_dict_or_path=_config("nvme", "cpu", path)):
                _model(0)
        else:
            _engine("nvme", "cpu", path)
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.faults
@pytest.mark.parametrize("init", [False, True])
def test_missing_or_unwritable_nvme_path_names_it(init, tmp_path):
    missing = tmp_path / "absent"
    err = run_distributed(_build_error, 2, 120, args=(str(missing), init))[0]
    assert "NvmePathError" in err and "offload_param.nvme_path" in err and str(missing) in err, err
    assert "\n" not in err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            err = run_distributed(_build_error, 2, 120, args=(str(ro), init))[0]
        finally:
            ro.chmod(stat.S_IRWXU)
        assert "not writable" in err and str(ro) in err, err


def _unwritable_swap_file(path: str) -> tuple[str, str, bool]:
    from ds_zero import GatheredParameters

    engine = _engine("nvme", "cpu", path)
    _train(engine, 0, 1)
    swapper = engine.optimizer.param_swapper
    weight = engine.module[0].weight
    with GatheredParameters([weight], modifier_rank=0):  # its unit's rows come in, changed: rewritten next
        pass
    unit = swapper._by_module[id(weight._ds_unit)]
    os.remove(unit.path)  # a folder in the file's place: the forward's write of the rows cannot open it
    os.mkdir(unit.path)
    try:
        _train(engine, 1, 1)
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        message = f"{type(exc).__name__}: {exc}"
    else:
        message = "no error"
    finally:
        os.rmdir(unit.path)
    # the rows that could not be written are still in memory, not lost
    return message, unit.path, unit.resident and all(r.untyped_storage().nbytes() for r in unit.rows)


@pytest.mark.faults
def test_failed_swap_write_names_the_file_and_keeps_the_rows(tmp_path):
    message, path, kept = run_distributed(_unwritable_swap_file, 2, 120, args=(str(tmp_path),))[0]
    assert "AioError" in message and path in message, message
    assert kept
