"""ds-kernels on one GPU: fused optimizer steps against the copy-bandwidth limit and torch's fused AdamW.

All figures come from one run on one GPU, measured side by side:

1. copy bandwidth: a large device-to-device copy, (bytes read + bytes written) / time;
2. flat fp32 AdamW (``ds_kernels.adamw_step_flat``) as a fraction of it (28 bytes/param) -- target >= 95%,
   plus the mixed-precision flat kernel and a short sweep of launch shapes;
3. a 1.31B-parameter, 289-tensor list (24 layers of a d=2048 transformer plus a 50304x2048
   embedding): ``ds_kernels.FusedAdam`` against ``torch.optim.AdamW(fused=True)`` -- target >= 1.1x;
4. mixed precision on that list: ds_kernels' one-pass kernel (fp32 master + states, bf16 grads,
   bf16 parameter copy) against torch fused AdamW on bf16 parameters and against the torch recipe
   (upcast grads, fused AdamW on fp32 master, copy to bf16);
5. first-use (cold cache) Triton compile time of each kernel used.

Runs unattended with only torch and triton installed (no ds-* install, no pydantic/typer): the
package sources are put on sys.path from this checkout. Time is measured with CUDA events after
warm-up (median of repeats). Sections that fail print their error and the rest still run.

    python benchmarks/kernels_gpu.py [--json out.json] [--reps 15]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A cold Triton cache, so that the compile times below are real first-use compiles.
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="ds_kernels_bench_triton_")
os.environ.pop("TRITON_INTERPRET", None)
for pkg in ("ds-kernels", "ds-accel"):
    src = ROOT / "packages" / pkg / "src"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))

import torch  # noqa: E402

import ds_kernels as K  # noqa: E402

D_MODEL, LAYERS, VOCAB = 2048, 24, 50304
ADAM = dict(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
RESULTS: list[dict] = []


def transformer_shapes() -> list[tuple[int, ...]]:
    """289 shapes, ~1.31B parameters: 24 layers x 12 tensors (qkv, out, mlp up/down with biases,
    two layernorms' weights and biases) plus the token embedding."""
    d = D_MODEL
    layer = [
        (3 * d, d),
        (3 * d,),
        (d, d),
        (d,),
        (4 * d, d),
        (4 * d,),
        (d, 4 * d),
        (d,),
        (d,),
        (d,),
        (d,),
        (d,),
    ]
    return [(VOCAB, d)] + layer * LAYERS


def timeit(fn, *, reps: int, warmup: int = 3, trials: int = 3) -> float:
    """Seconds per call in steady state: ``reps`` calls back to back between two CUDA events, the
    median of ``trials`` such runs, after warm-up.

    As in a training loop, each call's host work overlaps the device work queued before it (the
    device is kept busy by one untimed call when ``start`` is recorded); a call whose host work
    outlasts its device work makes the device wait, and that wait is then measured too.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    results = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()  # in flight while ``start`` is recorded: the host work of the first timed call overlaps it
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        results.append(start.elapsed_time(end) / 1e3 / reps)
    return statistics.median(results)


def report(section: str, name: str, value: float, unit: str, note: str = "") -> None:
    RESULTS.append(dict(section=section, name=name, value=value, unit=unit, note=note))
    print(f"  {name:<58} {value:>10.3f} {unit:<6} {note}", flush=True)


def section(title: str):
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n== {title}", flush=True)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # one failed section must not lose the others' figures
                traceback.print_exc()
                RESULTS.append(
                    dict(section=title, name="FAILED", value=float("nan"), unit="", note=repr(exc))
                )
                print(f"  FAILED: {exc!r}", flush=True)
                return None
            finally:
                torch.cuda.empty_cache()

        return run

    return wrap


@section("copy bandwidth")
def bench_copy(reps: int) -> float:
    n = 1 << 28  # 1 GiB of fp32
    src, dst = torch.randn(n, device="cuda"), torch.empty(n, device="cuda")
    seconds = timeit(lambda: dst.copy_(src), reps=reps)
    bandwidth = 2 * 4 * n / seconds / 1e12
    report("copy", "device-to-device copy, 1 GiB (read + write)", bandwidth, "TB/s")
    return bandwidth


def _flat_inputs(n: int, gdtype: torch.dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    p = torch.randn(n, device="cuda", generator=gen)
    g = torch.randn(n, device="cuda", generator=gen).to(gdtype)
    m = torch.randn(n, device="cuda", generator=gen).mul_(0.01)
    v = torch.rand(n, device="cuda", generator=gen).mul_(1e-4)
    return p, g, m, v


def _check_flat(p, g, m, v, out, kw) -> float:
    """Max relative error of one step on a 1M-element slice against plain torch arithmetic."""
    s = slice(0, 1 << 20)
    rp, rg, rm, rv = (t[s].double() for t in (p, g, m, v))
    step, wd = kw["step"], kw["weight_decay"]
    rm = 0.9 * rm + 0.1 * rg
    rv = 0.999 * rv + 0.001 * rg * rg
    ref = rp * (1 - kw["lr"] * wd) - kw["lr"] / (1 - 0.9**step) * rm / (
        (rv / (1 - 0.999**step)).sqrt() + kw["eps"]
    )
    K.adamw_step_flat(p, g, m, v, out_lowp=out, **kw)
    torch.cuda.synchronize()
    return float(((p[s].double() - ref).abs().max() / ref.abs().max()).item())


@section("flat AdamW (one buffer, as a ZeRO shard)")
def bench_flat(copy_bw: float, reps: int, n: int) -> None:
    kw = dict(ADAM, step=10)
    for label, gdtype in (
        ("fp32 p/g/m/v", torch.float32),
        ("fp32 master+states, bf16 grad + bf16 copy", torch.bfloat16),
    ):
        p, g, m, v = _flat_inputs(n, gdtype)
        out = None if gdtype == torch.float32 else torch.empty(n, device="cuda", dtype=torch.bfloat16)
        err = _check_flat(p, g, m, v, out, kw)
        seconds = timeit(
            lambda p=p, g=g, m=m, v=v, out=out: K.adamw_step_flat(p, g, m, v, out_lowp=out, **kw), reps=reps
        )
        bandwidth = 28 * n / seconds / 1e12
        report("flat", f"{label}: {n / 1e6:.0f}M params, step time", seconds * 1e3, "ms")
        report("flat", f"{label}: bandwidth (28 B/param)", bandwidth, "TB/s", f"check rel err {err:.1e}")
        report(
            "flat",
            f"{label}: fraction of copy bandwidth",
            100 * bandwidth / copy_bw,
            "%",
            "target >= 95%" + (" PASS" if bandwidth / copy_bw >= 0.95 else " MISS"),
        )
        del p, g, m, v, out
        torch.cuda.empty_cache()


@section("flat AdamW launch-shape sweep (fp32)")
def bench_sweep(copy_bw: float, reps: int, n: int) -> None:
    p, g, m, v = _flat_inputs(n, torch.float32)
    kw = dict(ADAM, step=10)
    for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (8192, 16)):
        policy = K.KernelPolicy(block=block, num_warps=warps)
        seconds = timeit(lambda policy=policy: K.adamw_step_flat(p, g, m, v, policy=policy, **kw), reps=reps)
        default = " (default)" if policy == K.DEFAULT_POLICY else ""
        report(
            "sweep",
            f"block={block} warps={warps}{default}",
            100 * 28 * n / seconds / 1e12 / copy_bw,
            "% copy",
        )


def _transformer_params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device="cuda").manual_seed(1)
    params = []
    for shape in transformer_shapes():
        p = torch.nn.Parameter(torch.randn(shape, device="cuda", generator=gen).mul_(0.02).to(dtype))
        p.grad = torch.randn(shape, device="cuda", generator=gen).mul_(1e-3).to(dtype)
        params.append(p)
    return params


@section("289-tensor, 1.31B-parameter list: FusedAdam vs torch.optim.AdamW(fused=True)")
def bench_list(copy_bw: float, reps: int) -> None:
    params = _transformer_params(torch.float32)
    count = sum(p.numel() for p in params)
    report("list", f"tensors: {len(params)}, parameters", count / 1e9, "B")
    ours = K.FusedAdam(params, lr=ADAM["lr"], weight_decay=ADAM["weight_decay"])
    theirs = torch.optim.AdamW(params, lr=ADAM["lr"], weight_decay=ADAM["weight_decay"], fused=True)
    t_ours = timeit(ours.step, reps=reps)
    t_theirs = timeit(theirs.step, reps=reps)
    host = _host_time(ours.step)
    for name, seconds in (("ds_kernels FusedAdam", t_ours), ("torch AdamW(fused=True)", t_theirs)):
        bandwidth = 28 * count / seconds / 1e12
        report(
            "list",
            f"{name}: step time",
            seconds * 1e3,
            "ms",
            f"{bandwidth:.2f} TB/s = {100 * bandwidth / copy_bw:.1f}% of copy",
        )
    report("list", "FusedAdam host time per step (launch side, no sync)", host * 1e3, "ms")
    speedup = t_theirs / t_ours
    report(
        "list",
        "speedup over torch fused AdamW",
        speedup,
        "x",
        "target >= 1.1x" + (" PASS" if speedup >= 1.1 else " MISS"),
    )
    del ours, theirs, params


def _host_time(step) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        step()
    seconds = (time.perf_counter() - start) / 5
    torch.cuda.synchronize()
    return seconds


@section("multi-tensor launch-shape sweep (289-tensor list, fp32, functional entry)")
def bench_multi_sweep(copy_bw: float, reps: int) -> None:
    params = _transformer_params(torch.float32)
    grads = [p.grad for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    count = sum(p.numel() for p in params)
    kw = dict(ADAM, step=10)
    for block, warps in ((1024, 4), (2048, 8), (4096, 8), (8192, 16)):
        policy = K.KernelPolicy(block=block, num_warps=warps)
        seconds = timeit(
            lambda policy=policy: K.adamw_step_multi(params, grads, m, v, policy=policy, **kw), reps=reps
        )
        default = " (default)" if policy == K.DEFAULT_POLICY else ""
        report(
            "multi-sweep",
            f"block={block} warps={warps}{default}",
            100 * 28 * count / seconds / 1e12 / copy_bw,
            "% copy",
        )


@section("mixed precision on the 289-tensor list")
def bench_mixed(reps: int) -> None:
    shapes = transformer_shapes()
    gen = torch.Generator(device="cuda").manual_seed(2)
    master = [torch.randn(s, device="cuda", generator=gen).mul_(0.02) for s in shapes]
    grads16 = [torch.randn(s, device="cuda", generator=gen).mul_(1e-3).bfloat16() for s in shapes]
    m = [torch.zeros_like(p) for p in master]
    v = [torch.zeros_like(p) for p in master]
    out16 = [p.bfloat16() for p in master]
    count = sum(p.numel() for p in master)
    flag = torch.zeros(1, device="cuda")
    kw = dict(ADAM, step=10, grad_scale=1.0, found_inf=flag)
    t_ours = timeit(
        lambda m=m, v=v: K.adamw_step_multi(master, grads16, m, v, out_lowp=out16, **kw), reps=reps
    )
    report(
        "mixed",
        "ds_kernels one pass (fp32 master/states, bf16 grad -> bf16 copy)",
        t_ours * 1e3,
        "ms",
        f"28 B/param = {28 * count / t_ours / 1e12:.2f} TB/s",
    )
    del m, v
    torch.cuda.empty_cache()

    # torch fused AdamW on pure bf16 parameters (14 B/param, bf16 states: less precise, fewer bytes).
    p16 = [torch.nn.Parameter(t.clone()) for t in out16]
    for p, g in zip(p16, grads16):
        p.grad = g
    bf16_opt = torch.optim.AdamW(p16, lr=ADAM["lr"], weight_decay=ADAM["weight_decay"], fused=True)
    t_bf16 = timeit(bf16_opt.step, reps=reps)
    report(
        "mixed",
        "torch AdamW(fused) on bf16 params + bf16 states",
        t_bf16 * 1e3,
        "ms",
        f"ours/this time ratio {t_ours / t_bf16:.2f} (it moves half the bytes)",
    )
    del bf16_opt, p16
    torch.cuda.empty_cache()

    # The torch recipe for fp32 master weights: upcast grads, fused AdamW, copy down (40 B/param).
    params32 = [torch.nn.Parameter(t) for t in master]
    for p in params32:
        p.grad = torch.empty_like(p)
    grads32 = [p.grad for p in params32]
    recipe_opt = torch.optim.AdamW(params32, lr=ADAM["lr"], weight_decay=ADAM["weight_decay"], fused=True)

    def recipe():
        torch._foreach_copy_(grads32, grads16)
        recipe_opt.step()
        torch._foreach_copy_(out16, params32)

    t_recipe = timeit(recipe, reps=reps)
    report(
        "mixed",
        "torch recipe: upcast grads + AdamW(fused) fp32 + copy to bf16",
        t_recipe * 1e3,
        "ms",
        f"speedup of ours {t_recipe / t_ours:.2f}x",
    )


@section("first-use Triton compile time (cold cache)")
def bench_compile() -> None:
    records = K.compile_records()
    for record in records:
        report("compile", record.kernel[:58], record.seconds, "s")
    report(
        "compile",
        f"total over {len(records)} kernel variants",
        sum(r.seconds for r in records),
        "s",
        "reference FusedAdam nvcc build: not measured here (deepspeed is not installed on this machine)",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--reps", type=int, default=10, help="calls per timed run (3 runs, median)")
    parser.add_argument("--flat-params", type=int, default=1 << 28, help="flat buffer size in parameters")
    parser.add_argument("--skip-sweeps", action="store_true", help="leave out the launch-shape sweeps")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("kernels_gpu: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    import triton

    start = time.perf_counter()
    print(
        f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
        f"ds_kernels {K.__version__}  default policy {K.DEFAULT_POLICY}"
    )
    copy_bw = bench_copy(args.reps) or float("nan")
    bench_flat(copy_bw, args.reps, args.flat_params)
    if not args.skip_sweeps:
        bench_sweep(copy_bw, args.reps, args.flat_params)
    bench_list(copy_bw, args.reps)
    if not args.skip_sweeps:
        bench_multi_sweep(copy_bw, args.reps)
    bench_mixed(args.reps)
    bench_compile()
    print(f"\ntotal wall time {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                dict(device=torch.cuda.get_device_name(), results=RESULTS),
                indent=1,
                default=lambda x: None if isinstance(x, float) and math.isnan(x) else x,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
