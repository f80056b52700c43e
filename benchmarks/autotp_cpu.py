"""AutoTP (``tensor_parallel.autotp_size`` 2) on 2 CPU ranks (gloo): step time and memory per rank, this
project against the reference DeepSpeed 0.19.8, same script and config on both.

A Llama built from a transformers config (no download) trains with ZeRO 1 and AdamW (torch's, through
``torch_adam``). Memory is counted neutrally: the bytes of the module's parameters each rank holds after
``deepspeed.initialize`` (split weights: 1/TP), next to the same count for the unsplit model; peak RSS
is reported as a coarse whole-process figure.

    python benchmarks/autotp_cpu.py [--steps 8] [--hidden 256] [--layers 4]

The reference runs in its own interpreter (benchmarks/_reference.py; ``DS_REFERENCE_PYTHON``), which needs
transformers importable (``REF_EXTRA_PATH`` is prepended to its ``PYTHONPATH`` when set).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

SEQ, MICRO = 128, 4


def _model(hidden: int, layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=4096,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=SEQ,
        attn_implementation="sdpa",
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).float()


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "DS_ACCELERATOR": "cpu",
        }
    )
    torch.set_num_threads(1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    model = _model(args.hidden, args.layers)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = {
        "train_micro_batch_size_per_gpu": MICRO,
        "train_batch_size": MICRO * world,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": 1},
        "tensor_parallel": {"autotp_size": 2},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, config=config)
    local_bytes = sum(p.numel() * p.element_size() for p in engine.module.parameters())
    gen = torch.Generator().manual_seed(1)
    times, losses = [], []
    for _ in range(args.steps):
        ids = torch.randint(0, 4096, (MICRO, SEQ), generator=gen)
        start = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    if rank == 0:
        Path(out).write_text(
            json.dumps(
                {
                    "version": deepspeed.__version__,
                    "step_s_median": statistics.median(times[2:]),
                    "local_param_mib": local_bytes / 2**20,
                    "full_param_mib": full_bytes / 2**20,
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "losses": losses,
                }
            )
        )


def _worker(args: argparse.Namespace) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, args, args.out), nprocs=2, start_method="spawn")


def _run(python: str, args: argparse.Namespace, out: Path, extra_path: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    cmd = [
        python,
        __file__,
        "--worker",
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _reference import reference_python

    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    runs: dict[str, list[dict]] = {"this project": [], "DeepSpeed 0.19.8": []}
    print(
        f"AutoTP 2 on 2 CPU ranks (gloo), ZeRO 1, Llama hidden {args.hidden} x {args.layers} layers, "
        f"micro {MICRO} x seq {SEQ}, {args.steps} steps, {args.rounds} rounds (both sides back to back)"
    )
    for round_ in range(args.rounds):
        for name, python, extra in (
            ("this project", sys.executable, None),
            ("DeepSpeed 0.19.8", str(reference_python()), os.environ.get("REF_EXTRA_PATH")),
        ):
            r = _run(python, args, tmp / "autotp_run.json", extra)
            if "error" in r:
                print(f"round {round_ + 1} {name:18s} failed: {r['error']}")
                continue
            runs[name].append(r)
            print(
                f"round {round_ + 1} {name:18s} step {r['step_s_median'] * 1000:8.1f} ms  params/rank "
                f"{r['local_param_mib']:7.2f} MiB (unsplit {r['full_param_mib']:.2f})  peak RSS "
                f"{r['peak_rss_mib']:.0f} MiB  first/last loss {r['losses'][0]:.4f}/{r['losses'][-1]:.4f}"
            )
    medians = {name: statistics.median(r["step_s_median"] for r in rs) for name, rs in runs.items() if rs}
    if len(medians) == 2:
        ours, ref = medians["this project"], medians["DeepSpeed 0.19.8"]
        print(
            f"median step: this project {ours * 1000:.1f} ms, DeepSpeed 0.19.8 {ref * 1000:.1f} ms, "
            f"ratio {ours / ref:.3f}"
        )


if __name__ == "__main__":
    main()
