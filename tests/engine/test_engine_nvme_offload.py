"""ZeRO-Infinity optimizer-state offload to NVMe (``offload_optimizer.device: nvme``) on 2 gloo ranks.

Numerics: stages 2 and 3 with NVMe offload equal CPU offload exactly (same CPU step, states only
moved through files); checkpoints resume across NVMe and CPU offload both ways. Faults: missing or
read-only nvme_path, a full disk, a truncated swap file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ds_comm.testing import run_distributed

sys.path.insert(0, os.path.dirname(__file__))
import nvme_workers as w  # noqa: E402


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_nvme_offload_equals_cpu_offload(stage, tmp_path):
    cpu = run_distributed(w.train, 2, 240, args=(stage, "cpu", None, 10))
    nvme = run_distributed(w.train, 2, 240, args=(stage, "nvme", str(tmp_path), 10))
    for rank in range(2):
        _close(cpu[rank][0], nvme[rank][0])
        assert cpu[rank][1] == pytest.approx(nvme[rank][1], rel=1e-5)
        files, in_memory = nvme[rank][2], nvme[rank][3]
        # the states live in files under nvme_path, none in memory between steps
        assert files and all(p.startswith(str(tmp_path)) and size > 0 for p, size in files)
        assert in_memory == 0 and cpu[rank][3] > 0
    assert not os.listdir(tmp_path / "ds_zero_optimizer"), "swap files are removed when the engine goes"


@pytest.mark.timeout(200)
def test_full_optimizer_state_getter_reads_the_swapped_states(tmp_path):
    cpu, cpu_err = run_distributed(w.exp_avgs, 2, 150, args=(2, "cpu", None))[0]
    nvme, nvme_err = run_distributed(w.exp_avgs, 2, 150, args=(2, "nvme", str(tmp_path)))[0]
    assert all(v is not None for v in nvme.values())
    _close(cpu, nvme)
    assert cpu_err is None and "nvme" in nvme_err  # writing the states on NVMe is refused, not lost


@pytest.mark.timeout(400)
@pytest.mark.parametrize("stage", [2, 3])
def test_nvme_checkpoints_resume_with_and_without_nvme(stage, tmp_path):
    whole = run_distributed(w.train, 2, 240, args=(stage, "cpu", None, 10))[0]
    for save_dev, load_dev in (("nvme", "cpu"), ("cpu", "nvme"), ("nvme", "nvme")):
        ckpt, swap = tmp_path / f"{save_dev}-{load_dev}", tmp_path / f"swap-{save_dev}-{load_dev}"
        swap.mkdir()
        run_distributed(w.train, 2, 240, args=(stage, save_dev, str(swap), 5, str(ckpt)))
        params, losses = run_distributed(w.resume, 2, 240, args=(stage, load_dev, str(swap), 5, str(ckpt)))[0]
        _close(whole[0], params)
        assert losses == pytest.approx(whole[1], rel=1e-5), (save_dev, load_dev)


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_missing_or_unwritable_nvme_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    err = run_distributed(w.build_error, 2, 60, args=(2, str(missing)))[0]
    assert err and "NvmePathError" in err and str(missing) in err
    assert "nvme_path is not set" in run_distributed(w.build_error, 2, 60, args=(2, None))[0]
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        err = run_distributed(w.build_error, 2, 60, args=(3, str(ro)))[0]
        assert err and "not writable" in err and str(ro) in err
    finally:
        subprocess.run(["umount", str(ro)], check=False)


@pytest.mark.faults
@pytest.mark.timeout(180)
def test_full_disk_names_the_path_and_leaves_the_checkpoint(tmp_path):
    disk, ckpt = tmp_path / "small", tmp_path / "ckpt"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        results = run_distributed(w.fill_then_step, 2, 150, args=(2, str(disk), str(ckpt)))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    for errors, before, after, _listing in results:
        assert len(errors) == 2, errors
        assert str(disk) in errors[0] and "No space left" in errors[0], errors[0]
        assert "NvmeStatesLost" in errors[1], errors[1]  # no checkpoint from lost states
        assert {k: v for k, v in after.items() if k.startswith(("good", "latest"))} == before
        assert (ckpt / "latest").read_text().strip() == "good"


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_failed_read_names_the_swap_file(tmp_path):
    err = run_distributed(w.corrupt_then_step, 2, 100, args=(2, str(tmp_path)))[0]
    assert err and "AioError" in err and str(tmp_path) in err and "subgroup" in err, err


CAP = 48 << 20  # private memory allowed past what the rank uses when training starts


@pytest.mark.faults
@pytest.mark.timeout(200)
def test_states_larger_than_the_memory_cap_train_only_with_nvme(tmp_path):
    """What is limited: RLIMIT_DATA (the rank's private writable memory: heap, anonymous mappings,
    thread stacks), capped after the engine is built and one micro-step has run at what the rank uses
    then plus CAP (48 MiB), less than the Adam states (64 MiB). CPU offload must hold all the states
    (and the masters' gradient copies, 32 MiB, which no offload swaps) at once and cannot step; NVMe
    offload holds two sub-groups' states (buffer_count) at a time and trains."""
    err, states, headroom, *_ = run_distributed(
        w.train_under_limit, 1, 150, args=("nvme", str(tmp_path), CAP)
    )[0]
    assert states > headroom == CAP  # the states (weights and biases) exceed the allowance
    assert err is None, err
    err, *_ = run_distributed(w.train_under_limit, 1, 150, args=("cpu", None, CAP))[0]
    assert err is not None and "can't allocate memory" in err, err


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_states_larger_than_the_memory_cap_save_and_resume_with_nvme(tmp_path):
    """Note [bounded checkpoint I/O]: under the same cap as above, a run saves its checkpoint, and a new
    process loads it and goes on, equal to a run that was never interrupted or capped."""
    swap, ckpt = tmp_path / "swap", tmp_path / "ckpt"
    swap.mkdir()
    err, states, _, first, _ = run_distributed(
        w.train_under_limit, 1, 150, args=("nvme", str(swap), CAP, 2, str(ckpt))
    )[0]
    assert states > CAP and err is None, err
    err, _, _, second, resumed = run_distributed(
        w.train_under_limit, 1, 150, args=("nvme", str(swap), CAP, 2, None, str(ckpt))
    )[0]
    assert err is None, err
    _, _, _, unbroken_losses, unbroken = run_distributed(
        w.train_under_limit, 1, 150, args=("nvme", str(swap), 1 << 40, 4)
    )[0]
    assert first + second == unbroken_losses
    assert resumed.keys() == unbroken.keys()
    for key in unbroken:
        assert torch.equal(resumed[key], unbroken[key]), key
    assert not [p for p in swap.rglob("spill*")]  # the save's spill files are gone


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_zero_infinity_saves_and_resumes_under_a_cap_below_its_weights(tmp_path):
    """Note [bounded parameter checkpoints]: stage 3 with the weights (32 MiB fp32) and the Adam states
    (64 MiB) on NVMe, capped after the first step at what the rank uses then plus CAP (48 MiB, room for
    the gradients, 32 MiB, which stay in memory from backward to the step). A save that brought every unit
    in and gathered the model on rank 0 would need the weights twice (64 MiB), as would a load that read
    the model file into memory and wrote every unit before releasing any: the cap forbids both. Unit by
    unit, the run saves, and a new process loads and trains on, equal to an uncapped unbroken run."""
    swap, ckpt = tmp_path / "swap", tmp_path / "ckpt"
    swap.mkdir()
    err, states, _, first, _ = run_distributed(
        w.train_under_limit, 1, 200, args=("nvme", str(swap), CAP, 2, str(ckpt), None, 3)
    )[0]
    weights = states // 2
    assert 2 * weights > CAP and err is None, err
    err, _, _, second, resumed = run_distributed(
        w.train_under_limit, 1, 200, args=("nvme", str(swap), CAP, 2, None, str(ckpt), 3)
    )[0]
    assert err is None, err
    _, _, _, unbroken_losses, unbroken = run_distributed(
        w.train_under_limit, 1, 200, args=("nvme", str(swap), 1 << 40, 4, None, None, 3)
    )[0]
    assert first + second == unbroken_losses
    assert resumed.keys() == unbroken.keys()
    for key in unbroken:
        assert torch.equal(resumed[key], unbroken[key]), key
    assert not [p for p in swap.rglob("spill*")]  # the save's spill files are gone


def test_what_stays_refused_says_so():
    from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError

    base = {"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    nvme = {"device": "nvme", "nvme_path": "/tmp"}
    DeepSpeedConfig({**base, "zero_optimization": {"stage": 2, "offload_optimizer": nvme}}, world_size=1)
    with pytest.raises(DeepSpeedConfigError, match="aio.use_gds"):
        DeepSpeedConfig({**base, "aio": {"use_gds": True}}, world_size=1)
    # parameter offload to NVMe is built (packages/ds-engine/tests/test_param_nvme.py)
    DeepSpeedConfig({**base, "zero_optimization": {"stage": 3, "offload_param": nvme}}, world_size=1)
    with pytest.raises(DeepSpeedConfigError, match="zenflow"):
        DeepSpeedConfig(
            {**base, "zero_optimization": {"stage": 2, "zenflow": {"topk_ratio": 0.1}}}, world_size=1
        )
