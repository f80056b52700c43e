"""Our hand-written 1F1B pipeline step against ``torch.distributed.pipelining`` and DeepSpeed 0.19.8, on 2
CPU ranks (gloo), 2 stages, the same layers, data, fp32 and SGD on every side.

Sides, each a fresh 2-rank launch per round (the order rotates round by round, so no side always runs
first or last):

- ``ours``: ``deepspeed.initialize`` on a ``deepspeed.pipe.PipelineModule`` (this project), ``train_batch``;
- ``torch``: ``PipelineStage`` (shapes inferred on the first step, which is a warm-up step; given
  statically, ``input_args``/``output_args``, torch 2.13's stage backward got no output gradient and failed
  with "grad can be implicitly created only for scalar outputs") + ``Schedule1F1B``, then ``ScheduleGPipe`` (alternating
  which goes first), each ``schedule.step`` followed by the same end of step as ours (below), then
  ``torch.optim.SGD.step`` and ``zero_grad``;
- ``reference``: the same worker as ``ours`` in the reference DeepSpeed's interpreter
  (benchmarks/_reference.py, ``DS_REFERENCE_PYTHON``);
- ``interleaved`` (labels ``il-*``): ours, Schedule1F1B and ScheduleGPipe built side by side in one 2-rank
  launch and stepped in turn, step by step (the order rotating each step), so load from other jobs on
  the machine falls on all three alike; the cleanest ours-vs-torch comparison on a shared machine.

Every side ends a step with the same work: gradients clipped to ``--clip`` (DeepSpeed's default 1.0; 0 turns
it off on every side) by the norm of the whole model (each stage's sum of squares all-reduced over the two
stages, as ``train_batch`` does), and the batch's mean loss broadcast from the last stage to every rank
(``train_batch`` returns it on every rank). Before 2026-12-03 the torch sides did neither, which gave them
an all-reduce and a broadcast less per step than ours and the reference.

The model is ``--layers`` x (Linear(``--hidden``) + GELU) split in half (DeepSpeed's uniform partition),
loss ``mean((out - y)^2)`` per micro-batch, averaged over the ``m`` micro-batches (DeepSpeed divides the
loss by ``m``; torch's ``scale_grads`` divides the gradients by ``m``: the same update). Every side starts
from the same seeded weights and trains on the same ``m`` micro-batches each step, so the per-step losses
must agree; the table prints the first and last step's loss of each side.

A step's time is the slower rank's (a barrier before each step; ``--warmup`` untimed steps first), the
launch's figure the median over ``--steps`` steps, the reported figure the median over ``--rounds``
launches (and the fastest round, the one other jobs disturbed least). Bubble per stage: ``1 - m * t_micro / t_step``, ``t_micro`` being that stage's forward+backward
of one micro-batch timed alone (median of 5) in the same process; theory ``(p - 1) / (m + p - 1)`` with
p = 2. Torch's ``Schedule1F1B`` needs ``m >= p``, hence no m = 1.

    python benchmarks/pipeline_vs_torch_pipelining.py [--hidden 2048] [--layers 8] [--micro 64]
        [--steps 5] [--warmup 2] [--rounds 3] [--lr 0.05] [--clip 1.0]
        [--sides ours,torch,reference,interleaved]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MICRO_COUNTS = (2, 4, 8)


def _layers(hidden: int, n: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    out: list[torch.nn.Module] = []
    for _ in range(n):
        out += [torch.nn.Linear(hidden, hidden), torch.nn.GELU()]
    return out


def _stage_bounds(n_items: int, stage: int) -> tuple[int, int]:
    """DeepSpeed's uniform partition of ``n_items`` layers into 2 stages (the first one larger when odd)."""
    first = (n_items + 1) // 2
    return (0, first) if stage == 0 else (first, n_items)


def _batches(m: int, micro: int, hidden: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(micro, hidden, generator=gen), torch.randn(micro, hidden, generator=gen))
        for _ in range(m)
    ]


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def _micro_time(module: torch.nn.Module, x: torch.Tensor, first: bool, reps: int = 5) -> float:
    """One micro-batch's forward+backward of this stage alone (median of ``reps`` after one untimed)."""
    times = []
    for _ in range(reps + 1):
        inp = x.clone().requires_grad_(not first)
        start = time.perf_counter()
        module(inp).pow(2).mean().backward()
        times.append(time.perf_counter() - start)
    module.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def _timed_steps(step, n: int) -> tuple[list[float], list[float]]:
    """``n`` calls of ``step()`` (which returns the loss or None), each after a barrier."""
    times, losses = [], []
    for _ in range(n):
        dist.barrier()
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
        losses.append(float("nan") if loss is None else float(loss))
    return times, losses


Setup = tuple  # (step() -> loss or None, the stage's module, whether it is the first stage)


def _ds_setup(args: argparse.Namespace, m: int) -> Setup:
    """A fresh PipelineModule + engine training on ``m`` micro-batches a step."""
    import deepspeed
    from deepspeed.pipe import PipelineModule

    model = PipelineModule(
        _layers(args.hidden, args.layers), num_stages=2, partition_method="uniform", loss_fn=_mse
    )
    config = {
        "train_micro_batch_size_per_gpu": args.micro,
        "gradient_accumulation_steps": m,
        "optimizer": {"type": "SGD", "params": {"lr": args.lr}},
        "gradient_clipping": args.clip,
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    batches = _batches(m, args.micro, args.hidden)
    return (lambda: engine.train_batch(iter(batches))), engine.module, engine.is_first_stage()


def _clip_over_stages(params: list[torch.Tensor], max_norm: float) -> None:
    """Clip this stage's gradients by the L2 norm of the whole pipeline's (both stages' sums of squares
    all-reduced), scaling only when the norm exceeds ``max_norm``: what ``train_batch`` does at
    ``gradient_clipping: max_norm``. Nothing at 0 (clipping off, as on the DeepSpeed sides)."""
    if max_norm <= 0:
        return
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.stack(torch._foreach_norm(grads)).pow(2).sum().reshape(1)
    dist.all_reduce(total)
    coef = max_norm / (float(total[0].sqrt()) + 1e-6)
    if coef < 1.0:
        torch._foreach_mul_(grads, coef)


def _torch_setup(args: argparse.Namespace, rank: int, m: int, schedule_cls: type) -> Setup:
    """A fresh stage + ``schedule_cls`` + SGD training on ``m`` micro-batches a step."""
    from torch.distributed.pipelining import PipelineStage

    batches = _batches(m, args.micro, args.hidden)
    x = torch.cat([b[0] for b in batches])  # step() splits it back into the same m micro-batches
    y = torch.cat([b[1] for b in batches])
    layers = _layers(args.hidden, args.layers)
    lo, hi = _stage_bounds(len(layers), rank)
    module = torch.nn.Sequential(*layers[lo:hi])
    stage = PipelineStage(module, rank, 2, torch.device("cpu"))
    schedule = schedule_cls(stage, n_microbatches=m, loss_fn=_mse)
    opt = torch.optim.SGD(module.parameters(), lr=args.lr)

    params = list(module.parameters())

    def step() -> torch.Tensor:
        losses: list[torch.Tensor] = []
        if rank == 0:
            schedule.step(x, return_outputs=False)
        else:
            schedule.step(target=y, losses=losses, return_outputs=False)
        _clip_over_stages(params, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = torch.stack([v.detach() for v in losses]).mean().reshape(1) if losses else torch.zeros(1)
        dist.broadcast(loss, src=1)  # the last stage's mean loss on every rank, as train_batch returns it
        return loss[0]

    return step, module, rank == 0


def _measure(args: argparse.Namespace, m: int, setup: Setup) -> dict:
    step, module, first = setup
    times, losses = _timed_steps(step, args.warmup + args.steps)
    dist.barrier()
    t_micro = _micro_time(module, _batches(m, args.micro, args.hidden)[0][0], first)
    return {"times": times[args.warmup :], "losses": losses, "t_micro": t_micro}


def _schedules(args: argparse.Namespace) -> list[tuple[str, type]]:
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    kinds: list[tuple[str, type]] = [("1f1b", Schedule1F1B), ("gpipe", ScheduleGPipe)]
    return kinds[::-1] if args.round % 2 else kinds


def _ds_runs(args: argparse.Namespace, rank: int) -> dict:
    """Ours or the reference: whichever ``deepspeed`` this interpreter imports."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    out: dict = {"version": deepspeed.__version__}
    for m in MICRO_COUNTS:
        out[f"ds/{m}"] = _measure(args, m, _ds_setup(args, m))
        gc.collect()  # the previous engine's buffers, before the next one is built
    return out


def _torch_runs(args: argparse.Namespace, rank: int) -> dict:
    dist.init_process_group("gloo")
    out: dict = {"version": torch.__version__}
    for m in MICRO_COUNTS:
        for name, schedule_cls in _schedules(args):
            out[f"{name}/{m}"] = _measure(args, m, _torch_setup(args, rank, m, schedule_cls))
            gc.collect()
    return out


def _interleaved_runs(args: argparse.Namespace, rank: int) -> dict:
    """Ours and torch's schedules in the same two processes, alternating step by step (the order rotating
    each step), so that load from other jobs falls on all of them alike."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    out: dict = {"version": f"{deepspeed.__version__} / torch {torch.__version__}"}
    for m in MICRO_COUNTS:
        setups = {"il_ours": _ds_setup(args, m)}
        for name, schedule_cls in _schedules(args):
            setups[f"il_{name}"] = _torch_setup(args, rank, m, schedule_cls)
        names = list(setups)
        times: dict[str, list[float]] = {n: [] for n in names}
        losses: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.warmup + args.steps):
            for n in names[i % len(names) :] + names[: i % len(names)]:
                t, loss = _timed_steps(setups[n][0], 1)
                times[n] += t
                losses[n] += loss
        dist.barrier()
        for n in names:
            _, module, first = setups[n]
            t_micro = _micro_time(module, _batches(m, args.micro, args.hidden)[0][0], first)
            out[f"{n}/{m}"] = {"times": times[n][args.warmup :], "losses": losses[n], "t_micro": t_micro}
        del setups
        gc.collect()
    return out


def _rank(rank: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "DS_ACCELERATOR": "cpu",
        }
    )
    torch.set_num_threads(1)
    runs = {"torch": _torch_runs, "ds": _ds_runs, "interleaved": _interleaved_runs}[args.worker]
    result = runs(args, rank)
    gathered: list = [None, None]
    dist.all_gather_object(gathered, result)
    if rank == 0:
        Path(args.out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def _launch(python: str, worker: str, args: argparse.Namespace, rnd: int, out: Path) -> dict:
    """One 2-rank launch of ``worker`` in ``python``: per-rank results, or {'error': tail of the output}."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [python, __file__, "--worker", worker, "--out", str(out), "--round", str(rnd), "--port", str(port)]
    for key in ("hidden", "layers", "micro", "steps", "warmup", "lr", "clip"):
        cmd += [f"--{key}", str(getattr(args, key))]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    out.unlink(missing_ok=True)  # never read an earlier launch's figures
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-3000:]}
    return {"ranks": json.loads(out.read_text())}


def _summaries(res: dict, key: str) -> dict:
    """A launch's step time (per-step max over ranks, median over steps), bubbles, losses."""
    r0, r1 = res["ranks"][0][key], res["ranks"][1][key]
    step = statistics.median(max(a, b) for a, b in zip(r0["times"], r1["times"]))
    m = int(key.split("/")[1])
    return {
        "step": step,
        "bubble": [1 - m * r["t_micro"] / step for r in (r0, r1)],
        "losses": r1["losses"],  # the last stage's (ours also broadcasts them; torch's live there only)
    }


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(
            ["git", *cmd], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--micro", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", type=str, default="ours,torch,reference,interleaved")
    parser.add_argument("--worker", type=str, default="")
    parser.add_argument("--out", type=str, default="")
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        mp.start_processes(_rank, args=(args.port, args), nprocs=2, start_method="spawn")
        return

    sides = args.sides.split(",")
    pythons = {"ours": sys.executable, "torch": sys.executable, "interleaved": sys.executable}
    if "reference" in sides:
        sys.path.insert(0, str(Path(__file__).parent))
        from _reference import reference_python

        pythons["reference"] = str(reference_python())
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    print(
        f"pipeline_vs_torch_pipelining: 2 stages on 2 gloo ranks, {args.layers} x Linear({args.hidden})+GELU, "
        f"micro-batch {args.micro}, fp32, SGD lr {args.lr}, clip {args.clip}; {args.warmup} warm-up + {args.steps} timed steps per "
        f"launch, {args.rounds} rounds; commit {_git('rev-parse', '--short', 'HEAD')}"
    )
    print(f"load average at start: {os.getloadavg()}", flush=True)
    # per (side label, m): one summary per round
    runs: dict[tuple[str, int], list[dict]] = {}
    versions: dict[str, str] = {}
    loads: list[float] = []
    for rnd in range(args.rounds):
        order = sides[rnd % len(sides) :] + sides[: rnd % len(sides)]
        for side in order:
            loads.append(os.getloadavg()[0])
            worker = side if side in ("torch", "interleaved") else "ds"
            res = _launch(pythons[side], worker, args, rnd, tmp / f"pipe_vs_torch_{side}.json")
            if "error" in res:
                print(f"round {rnd} {side}: failed:\n{res['error']}", flush=True)
                continue
            versions[side] = res["ranks"][0]["version"]
            for key in res["ranks"][0]:
                if key == "version":
                    continue
                kind, m = key.split("/")
                label = side if kind == "ds" else {"il_ours": "il-ours"}.get(kind, f"torch-{kind}")
                label = label.replace("torch-il_", "il-torch-")
                s = _summaries(res, key)
                runs.setdefault((label, int(m)), []).append(s)
                print(
                    f"round {rnd} {label:12s} m={m}: step {s['step'] * 1000:7.1f} ms, "
                    f"bubble {s['bubble'][0]:.3f}/{s['bubble'][1]:.3f}, "
                    f"loss first {s['losses'][0]:.8f} last {s['losses'][-1]:.8f}",
                    flush=True,
                )
    print(f"load average at end: {os.getloadavg()}; 1-min load before each launch: {loads}")
    print(f"versions: {versions}")
    all_labels = (
        "ours",
        "torch-1f1b",
        "torch-gpipe",
        "reference",
        "il-ours",
        "il-torch-1f1b",
        "il-torch-gpipe",
    )
    labels = [lb for lb in all_labels if any(k[0] == lb for k in runs)]
    print("\nmedians over rounds (step ms; bubble stage0/stage1; theory 1/(m+1)):")
    print("  m | " + " | ".join(f"{lb:>24s}" for lb in labels) + " | theory")
    med: dict[tuple[str, int], float] = {}
    for m in MICRO_COUNTS:
        cells = []
        for lb in labels:
            rs = runs.get((lb, m), [])
            if not rs:
                cells.append(f"{'-':>24s}")
                continue
            med[lb, m] = statistics.median(r["step"] for r in rs)
            b0 = statistics.median(r["bubble"][0] for r in rs)
            b1 = statistics.median(r["bubble"][1] for r in rs)
            cells.append(f"{med[lb, m] * 1000:8.1f} ms {b0:6.3f}/{b1:6.3f}")
        print(f"  {m} | " + " | ".join(cells) + f" | {1 / (m + 1):.3f}")
    # other jobs on the machine only ever add time, so the fastest round is the least disturbed one
    print("\nfastest round (step ms):")
    for m in MICRO_COUNTS:
        cells = [f"{lb} {min(r['step'] for r in runs[lb, m]) * 1000:.1f}" for lb in labels if (lb, m) in runs]
        print(f"  m={m}: " + ", ".join(cells))
    print("\nratios of medians, and losses (first step / last step, last stage, round 0):")
    for m in MICRO_COUNTS:
        parts = []
        for other in ("torch-1f1b", "torch-gpipe", "reference"):
            if ("ours", m) in med and (other, m) in med:
                parts.append(f"ours/{other} {med['ours', m] / med[other, m]:.3f}")
        for other in ("il-torch-1f1b", "il-torch-gpipe"):
            if ("il-ours", m) in med and (other, m) in med:
                parts.append(f"il-ours/{other} {med['il-ours', m] / med[other, m]:.3f}")
        print(f"  m={m}: " + ", ".join(parts))
        ref_losses = runs[("ours", m)][0]["losses"] if ("ours", m) in runs else None
        for lb in labels:
            if (lb, m) not in runs:
                continue
            losses = runs[lb, m][0]["losses"]
            agree = ""
            if ref_losses is not None and lb != "ours":
                worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, ref_losses))
                agree = f"  max rel. diff from ours over all steps {worst:.1e}"
            print(f"    {lb:12s} {losses[0]:.8f} / {losses[-1]:.8f}{agree}")


if __name__ == "__main__":
    main()
