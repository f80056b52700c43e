"""ZeRO stage 3 on one CUDA GPU (world size 1) against plain PyTorch: step time, side by side.

A ~163M-parameter GPT (GPT-2 small shape with an untied output layer: 12 layers, d=768, 12 heads,
vocabulary 50304), micro batch 16, sequence 512, bf16, fused AdamW, gradient clipping at 1.0. Three
runs in one process, on one GPU, one after another with the same data:

* ``plain bf16``  -- the model cast to bf16, ``torch.optim.AdamW(fused=True)`` on the bf16 weights;
* ``plain amp``   -- fp32 weights, ``torch.autocast(bfloat16)``, fused AdamW on the fp32 weights;
* ``zero3``       -- ``ds_zero.wrap`` at stage 3 with bf16 mixed precision and DeepSpeed's default
  stage-3 knobs (fp32 shards = masters, FSDP2 units -- one unit on one rank, see Note [one rank] in
  ``ds_zero.stage3.policy`` -- small parameters whole), the same fused AdamW on the shards;
* ``--variants``: zero3 with ``stage3_max_live_parameters`` below the model size (per-block units,
  some gathered twice) and with ``stage3_param_persistence_threshold`` 0 (every parameter in a unit).

Prints each median step time (CUDA events, after warm-up), peak memory, and the ratios
zero3 / plain (target from issue 6: at most 1.15x plain bf16). Runs unattended with only torch and
triton installed: the package sources are put on ``sys.path`` from this checkout.

    python benchmarks/zero3_gpu.py [--steps 30] [--warmup 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("ds-accel", "ds-comm", "ds-kernels", "ds-zero"):
    src = str(ROOT / "packages" / pkg / "src")
    if src not in sys.path:
        sys.path.insert(0, src)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

VOCAB, D, LAYERS, HEADS = 50304, 768, 12, 12


class Block(nn.Module):
    """Pre-norm transformer block (causal self-attention through SDPA, GELU MLP)."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc, self.out = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, seq: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, D), nn.Embedding(seq, D)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).float().view(-1, VOCAB), y.view(-1))


HOST: dict[str, float] = {}


def timed(step, *, warmup: int, steps: int) -> tuple[float, float]:
    """Median step time in ms (CUDA events) and the last loss. Also records in ``HOST["ms"]`` the host
    (CPU) time per step when steps are queued back to back: near the step time means CPU-bound."""
    for _ in range(warmup):
        loss = step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    HOST["ms"] = (time.perf_counter() - t0) / steps * 1e3
    torch.cuda.synchronize()
    HOST["queued_ms"] = (time.perf_counter() - t0) / steps * 1e3
    return statistics.median(times), float(loss)


def fresh_model(seq: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return GPT(seq).to(device)


def plain_step(data, device, seq: int, *, amp: bool):
    """One plain PyTorch training step as a function: bf16 weights (``amp=False``) or fp32 weights
    under ``torch.autocast(bfloat16)`` (``amp=True``); fused AdamW, clipping at 1.0."""
    model = fresh_model(seq, device)
    if not amp:
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    # no autocast context at all without amp: the bf16 baseline does no work it does not need
    precision = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def step():
        with precision():
            loss = loss_of(model, *data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def zero3_step(data, device, seq: int, **stage3):
    """One ``ds_zero`` stage-3 training step as a function (bf16 mixed precision, clipping at 1.0), and
    its trainer (for ``close()`` and the unit counts)."""
    from ds_zero import MixedPrecisionPolicy, wrap
    from ds_zero.stage3 import Stage3Policy, Zero3Policy

    model = fresh_model(seq, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    policy = Zero3Policy(
        mixed_precision=MixedPrecisionPolicy(param_dtype=torch.bfloat16),
        clip_grad=1.0,
        stage3=Stage3Policy(**stage3),
    )
    trainer = wrap(model, opt, policy=policy)

    def step():
        loss = loss_of(model, *data)
        trainer.backward(loss)
        trainer.step()
        return loss.detach()

    return step, trainer


def run_plain_bf16(args, data, device):
    return timed(plain_step(data, device, args.seq, amp=False), warmup=args.warmup, steps=args.steps)


def run_plain_amp(args, data, device):
    return timed(plain_step(data, device, args.seq, amp=True), warmup=args.warmup, steps=args.steps)


def run_zero3(args, data, device, **stage3):
    step, trainer = zero3_step(data, device, args.seq, **stage3)
    units = len(trainer.sharded.units)
    persistent = len(trainer.sharded.plan.persistent)
    ms, loss = timed(step, warmup=args.warmup, steps=args.steps)
    if args.profile and not stage3:
        profile(step, args.profile)
    trainer.close()
    return ms, loss, units, persistent


def profile(step, out_dir: str) -> None:
    """Three profiled steps: kernel and host tables written to ``out_dir``, a summary printed."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for key in ("self_cuda_time_total", "self_cpu_time_total", "cpu_time_total"):
        Path(out_dir, f"zero3_{key}.txt").write_text(table.table(sort_by=key, row_limit=40))
    print(table.table(sort_by="self_cuda_time_total", row_limit=12), flush=True)


def init_world() -> None:
    import ds_comm

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    ds_comm.init_distributed(dist_backend="nccl", verbose=False)


def measure(name, fn, args, data, device, results):
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn(args, data, device)
    ms, loss = out[0], out[1]
    row = {
        "run": name,
        "ms_per_step": round(ms, 3),
        "loss": round(loss, 4),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    row.update(
        host_ms_per_step=round(HOST.get("ms", 0.0), 3),
        queued_ms_per_step=round(HOST.get("queued_ms", 0.0), 3),
    )
    if name.startswith("zero3"):
        row.update(units=out[2], persistent_params=out[3])
    results.append(row)
    print(json.dumps(row), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--profile", default=None, help="profile three zero3 steps; tables go to this folder")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also time zero3 with a live-parameter bound (per-block units) and with no persistent parameters",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("zero3_gpu: no CUDA device; this benchmark needs one", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    init_world()
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randint(0, VOCAB, (args.micro_batch, args.seq), generator=gen).to(device)
    y = torch.randint(0, VOCAB, (args.micro_batch, args.seq), generator=gen).to(device)
    params = sum(p.numel() for p in GPT(args.seq).parameters())
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, {params / 1e6:.1f}M parameters, "
        f"micro batch {args.micro_batch}, seq {args.seq}",
        flush=True,
    )
    results: list[dict] = []
    runs = [("plain_bf16", run_plain_bf16), ("plain_amp", run_plain_amp), ("zero3", run_zero3)]
    if args.variants:
        # a live-parameter bound below the model size: per-block units (16), some re-gathered in backward
        runs += [
            ("zero3_bounded_live", lambda a, d, dev: run_zero3(a, d, dev, max_live_parameters=100_000_000)),
            ("zero3_no_persistent", lambda a, d, dev: run_zero3(a, d, dev, param_persistence_threshold=0)),
        ]
    for name, fn in runs:
        try:
            measure(name, fn, args, (x, y), device, results)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other runs
            print(f"{name}: failed: {type(exc).__name__}: {exc}", flush=True)
    by = {r["run"]: r["ms_per_step"] for r in results}
    for run in [r for r in by if r.startswith("zero3")]:
        for base in ("plain_bf16", "plain_amp"):
            if base in by:
                print(f"{run} / {base}: {by[run] / by[base]:.3f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "params": params}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
