"""ZenFlow (ds_zero.zenflow) on 2 real gloo ranks, stage 2 with the optimizer on the CPU.

* frozen selection with a CPU update every step is plain Adam: the losses equal stage 2 + CPU offload;
* with ``topk_ratio < 1`` and ``update_interval > 1`` the weights equal a single-process reference
  written below from ZenFlow's definition (Note [zenflow] in ds_zero.zenflow), with and without
  ``overlap_step``.
"""

from __future__ import annotations

import pytest
import torch
from _models import global_batches, tiny_mlp

import ds_comm
from ds_comm.testing import run_distributed

STEPS, MICRO, LR, WD = 10, 2, 1e-2, 0.01


def _policy(zenflow, clip: float = 0.0):
    from ds_zero import OffloadPolicy, ReducePolicy, ZeroPolicy

    return ZeroPolicy(
        stage=2,
        reduce=ReducePolicy(bucket_numel=200),  # several units: columns cut by unit and shard edges
        offload=OffloadPolicy(optimizer_device="cpu", pin_memory=False),
        clip_grad=clip,
        zenflow=zenflow,
    )


def _train(zenflow_kwargs: dict | None, steps: int, clip: float = 0.0):
    from ds_zero import ZenFlowPolicy, wrap

    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    zenflow = None if zenflow_kwargs is None else ZenFlowPolicy(**zenflow_kwargs)
    trainer = wrap(model, opt, policy=_policy(zenflow, clip))
    losses = []
    mine = slice(rank * MICRO, (rank + 1) * MICRO)
    for x, y in global_batches(steps, MICRO, world):
        loss = torch.nn.functional.mse_loss(model(x[mine]), y[mine])
        trainer.backward(loss)
        assert trainer.step()
        losses.append(loss.item())
    trainer.close()
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.timeout(180)
def test_frozen_selection_updated_every_step_is_plain_adam():
    # update_interval 1 and one selection (select_interval 0): the selected columns' AdamW starts with
    # the CPU Adam at step 1 and sees the same gradients, so ZenFlow is Adam, whatever topk_ratio says
    zenflow = {"topk_ratio": 0.5, "update_interval": 1, "select_interval": 0}
    plain = run_distributed(_train, world_size=2, args=(None, STEPS))
    zf = run_distributed(_train, world_size=2, args=(zenflow, STEPS))
    for (plain_losses, plain_params), (zf_losses, zf_params) in zip(plain, zf):
        torch.testing.assert_close(zf_losses, plain_losses, rtol=1e-5, atol=1e-5)
        for got, want in zip(zf_params, plain_params):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- a single-process reference, written from the definition ---------------------------------------
def _adam(p, g, m, v, step, *, decoupled=True):
    b1, b2, eps = 0.9, 0.999, 1e-8
    if decoupled:
        p.mul_(1 - LR * WD)
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v / (1 - b2**step)).sqrt() + eps
    p.sub_(LR / (1 - b1**step) * m / denom)


def _clip(tensors, max_norm):
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))
    coef = min(1.0, max_norm / (float(norm) + 1e-6))
    return [t * coef for t in tensors]


def _reference(steps, *, topk, update, select, warm, overlap, clip):
    """ZenFlow by hand on whole tensors: fp32 CPU masters + Adam, selected columns + AdamW."""
    model = tiny_mlp()
    params = list(model.parameters())
    master = [p.detach().clone() for p in params]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    acc = [torch.zeros_like(p) for p in params]
    cols = vals = sm = sv = None  # the selection: column indices (None: whole parameter), values, moments
    sel_steps, pending = 0, False

    def put_selected():
        with torch.no_grad():
            for p, c, val in zip(params, cols, vals):
                if c is None:
                    p.copy_(val)
                else:
                    p[:, c] = val

    def publish():
        with torch.no_grad():
            for p, w in zip(params, master):
                p.copy_(w)
        put_selected()

    losses = []
    for t, (x, y) in enumerate(global_batches(steps, MICRO, 2)):
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        grads = [g / update for g in torch.autograd.grad(loss, params)]
        if t < warm:
            grads = _clip(grads, clip)
            for i in range(len(params)):
                _adam(master[i], grads[i], m[i], v[i], t + 1)
            with torch.no_grad():
                for p, w in zip(params, master):
                    p.copy_(w)
            continue
        if t == warm or (select and t % select == 0):
            if cols is not None:  # the old selection's values go back into the masters
                for w, c, val in zip(master, cols, vals):
                    if c is None:
                        w.copy_(val)
                    else:
                        w[:, c] = val
            cols = [
                torch.topk(g.abs().sum(0), max(1, int(g.shape[1] * topk))).indices.sort().values
                if g.dim() == 2
                else None
                for g in grads
            ]
            vals = [w.clone() if c is None else w[:, c].clone() for w, c in zip(master, cols)]
            sm, sv = [torch.zeros_like(a) for a in vals], [torch.zeros_like(a) for a in vals]
        sel_steps += 1
        for i, c in enumerate(cols):
            _adam(vals[i], grads[i] if c is None else grads[i][:, c], sm[i], sv[i], sel_steps)
        put_selected()
        acc = [a + g for a, g in zip(acc, grads)]
        if (t + 1 - warm) % update == 0 or (select and (t + 1) % select == 0):
            acc = _clip(acc, clip)
            if overlap and pending:
                publish()  # the previous interval's CPU result lands now
            for i in range(len(params)):
                _adam(master[i], acc[i], m[i], v[i], t + 1)
            acc = [torch.zeros_like(a) for a in acc]
            pending = True
            if not overlap:
                publish()
    return losses, [p.detach().clone() for p in params]


ZF = {"topk_ratio": 0.25, "update_interval": 3, "select_interval": 6, "full_warm_up_rounds": 2}
ZF_STEPS, ZF_CLIP = 14, 0.3


@pytest.mark.timeout(180)
@pytest.mark.parametrize("overlap", [False, True])
def test_selective_updates_match_the_definition(overlap):
    expected_losses, expected = _reference(
        ZF_STEPS,
        topk=ZF["topk_ratio"],
        update=ZF["update_interval"],
        select=ZF["select_interval"],
        warm=ZF["full_warm_up_rounds"],
        overlap=overlap,
        clip=ZF_CLIP,
    )
    results = run_distributed(_train, world_size=2, args=({**ZF, "overlap_step": overlap}, ZF_STEPS, ZF_CLIP))
    full_batch_losses = [sum(r[0][t] for r in results) / 2 for t in range(ZF_STEPS)]
    torch.testing.assert_close(full_batch_losses, expected_losses, rtol=1e-5, atol=1e-5)
    for _, params in results:
        for got, want in zip(params, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_reference_is_not_plain_adam():
    # the comparison above would prove nothing if ZenFlow's schedule left the weights where Adam does
    _, zenflow = _reference(ZF_STEPS, topk=0.25, update=3, select=6, warm=2, overlap=False, clip=ZF_CLIP)
    _, overlapped = _reference(ZF_STEPS, topk=0.25, update=3, select=6, warm=2, overlap=True, clip=ZF_CLIP)
    _, plain = _reference(ZF_STEPS, topk=0.25, update=1, select=0, warm=ZF_STEPS, overlap=False, clip=ZF_CLIP)
    assert max((a - b).abs().max().item() for a, b in zip(zenflow, plain)) > 1e-3
    assert max((a - b).abs().max().item() for a, b in zip(zenflow, overlapped)) > 1e-4


def test_schedule_boundaries():
    from ds_zero.zenflow.schedule import ZenFlowSchedule

    s = ZenFlowSchedule(warm_up=2, update_interval=3, select_interval=6)
    assert [t for t in range(14) if s.in_warm_up(t)] == [0, 1]
    assert [t for t in range(14) if s.selects(t)] == [2, 6, 12]
    assert [t for t in range(14) if s.updates(t)] == [4, 5, 7, 10, 11, 13]
    once = ZenFlowSchedule(warm_up=0, update_interval=2, select_interval=0)
    assert [t for t in range(6) if once.selects(t)] == [0]
    assert [t for t in range(6) if once.updates(t)] == [1, 3, 5]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"topk_ratio": 1.0}, "topk_ratio"),
        ({"topk_ratio": 0.0}, "topk_ratio"),
        ({"update_interval": 0}, "update_interval"),
        ({"update_interval": 4, "select_interval": 2}, "select_interval"),
    ],
)
def test_policy_refuses_bad_values(kwargs, needle):
    from ds_zero import ZenFlowPolicy

    with pytest.raises(ValueError, match=needle):
        ZenFlowPolicy(**kwargs)


def _needs_cpu_offload():
    from ds_zero import OffloadPolicy, ZenFlowPolicy, ZeroPolicy, wrap

    model = tiny_mlp()
    policy = ZeroPolicy(stage=2, offload=OffloadPolicy(optimizer_device="none"), zenflow=ZenFlowPolicy())
    try:
        wrap(model, torch.optim.AdamW(model.parameters()), policy=policy)
    except ValueError as exc:
        return str(exc)
    return "accepted"


@pytest.mark.timeout(60)
def test_zenflow_needs_cpu_offload():
    assert "offload_optimizer.device 'cpu'" in run_distributed(_needs_cpu_offload, world_size=1)[0]


# --- resume (Note [zenflow checkpoint]) --------------------------------------------------------------
SAVE_AFTER = 9  # mid-interval: a gradient sum is pending, and with overlap_step an unpublished CPU step


def _train_in_two_runs(zenflow_kwargs: dict, adam: str, world_after: int, ckpt: str):
    """Phase ``world_after == 0``: train SAVE_AFTER steps and save each rank's state; otherwise load every
    rank's saved state and train the remaining steps. The global batch is the same at any world size."""
    import os

    from ds_zero import ZenFlowPolicy, wrap

    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    # the resumed run starts from another init: everything must come from the checkpoint
    model = tiny_mlp(seed=5 if world_after else 0)
    make = torch.optim.AdamW if adam == "AdamW" else torch.optim.Adam
    opt = make(model.parameters(), lr=LR, weight_decay=WD)
    trainer = wrap(model, opt, policy=_policy(ZenFlowPolicy(**zenflow_kwargs), ZF_CLIP))
    batches = global_batches(ZF_STEPS, MICRO, 2)
    if world_after:
        files = sorted(f for f in os.listdir(ckpt) if f.startswith("rank"))
        trainer.load_state_dict([torch.load(os.path.join(ckpt, f), weights_only=False) for f in files])
        batches = batches[SAVE_AFTER:]
    else:
        batches = batches[:SAVE_AFTER]
    per_rank = 2 * MICRO // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    for x, y in batches:
        trainer.backward(torch.nn.functional.mse_loss(model(x[mine]), y[mine]))
        assert trainer.step()
    if not world_after:
        torch.save(trainer.state_dict(), os.path.join(ckpt, f"rank{rank}.pt"))
    params = [p.detach().clone() for p in model.parameters()]
    trainer.close()
    return params


def _train_unbroken(zenflow_kwargs: dict, adam: str):
    from ds_zero import ZenFlowPolicy, wrap

    rank = ds_comm.get_rank()
    model = tiny_mlp()
    make = torch.optim.AdamW if adam == "AdamW" else torch.optim.Adam
    trainer = wrap(
        model,
        make(model.parameters(), lr=LR, weight_decay=WD),
        policy=_policy(ZenFlowPolicy(**zenflow_kwargs), ZF_CLIP),
    )
    mine = slice(rank * MICRO, (rank + 1) * MICRO)
    for t, (x, y) in enumerate(global_batches(ZF_STEPS, MICRO, 2)):
        trainer.backward(torch.nn.functional.mse_loss(model(x[mine]), y[mine]))
        assert trainer.step()
        if t + 1 == SAVE_AFTER:
            trainer.state_dict()  # saving must not change the run
    params = [p.detach().clone() for p in model.parameters()]
    trainer.close()
    return params


def _resume(tmp_path, zenflow_kwargs: dict, adam: str, world_after: int):
    run_distributed(_train_in_two_runs, world_size=2, args=(zenflow_kwargs, adam, 0, str(tmp_path)))
    return run_distributed(
        _train_in_two_runs, world_size=world_after, args=(zenflow_kwargs, adam, world_after, str(tmp_path))
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("overlap", "adam"), [(False, "AdamW"), (True, "AdamW"), (False, "Adam")])
def test_resume_equals_an_unbroken_run(tmp_path, overlap, adam):
    zenflow = {**ZF, "overlap_step": overlap}
    unbroken = run_distributed(_train_unbroken, world_size=2, args=(zenflow, adam))
    resumed = _resume(tmp_path, zenflow, adam, world_after=2)
    for want, got in zip(unbroken, resumed):
        for a, b in zip(got, want):
            assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.timeout(240)
def test_resume_on_another_world_size(tmp_path):
    zenflow = {**ZF, "overlap_step": True}
    (want, _) = run_distributed(_train_unbroken, world_size=2, args=(zenflow, "Adam"))
    (got,) = _resume(tmp_path, zenflow, "Adam", world_after=1)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7), (1, 9), (6, 1), (4, 4)])
def test_owned_blocks_give_scores_columns_and_write_back_of_every_owned_range(shape):
    """Note [owned blocks]: for every range [start, end) a rank may own of a weight's flattening, the
    column scores, the selected columns and their write-back equal those of the zero-filled full weight,
    and the write-back touches nothing outside the range."""
    import itertools

    from ds_zero.zenflow.columns import ParamView

    rows, cols = shape
    full = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor(sorted({0, cols // 2, cols - 1}))
    off = 3  # where the range sits in the shard, with other units' elements around it
    for start, end in itertools.combinations(range(rows * cols + 1), 2):
        n = end - start
        shard = torch.full((off + n + 2,), 7.0)
        shard[off : off + n] = full.reshape(-1)[start:end]
        view = ParamView(None, 0, 0, torch.Size(shape), start, end, off)  # type: ignore[arg-type]
        mine = torch.zeros(rows * cols)
        mine[start:end] = full.reshape(-1)[start:end]
        mine = mine.view(shape)
        torch.testing.assert_close(view.column_scores(shard), mine.abs().sum(dim=0))
        assert torch.equal(view.own_columns(shard, idx), mine[:, idx])
        new = torch.randn(rows, idx.numel())
        written = shard.clone()
        view.store_columns(written, idx, new)
        want = full.clone()
        want[:, idx] = new
        assert torch.equal(written[off : off + n], want.reshape(-1)[start:end]), (start, end)
        assert (written[:off] == 7).all() and (written[off + n :] == 7).all()
