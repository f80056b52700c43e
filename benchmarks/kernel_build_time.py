"""What a user waits before the first fused Adam step: ds_kernels' Triton compile against the
reference DeepSpeed FusedAdam's nvcc build, both for an H100/H200 (sm_90), side by side on this
machine's processor.

Neither needs a GPU: Triton's NVIDIA backend generates PTX and runs ptxas without one, and
DeepSpeed's op builder runs nvcc. Both are measured cold (an empty Triton cache, an empty torch
extensions folder), each in a fresh process, alternating, ``--rounds`` times:

* ours: the kernel ``ds_kernels.FusedAdam`` compiles on its first fp32 step (``adam_multi_fp32``),
  and for reference every kernel variant the optimizers use;
* reference: ``FusedAdamBuilder().load()`` (DeepSpeed's JIT build of ``fused_adam``) with
  ``TORCH_CUDA_ARCH_LIST=9.0``, and once with ``9.0a`` (Hopper's arch-specific target).

The reference needs a CUDA build of torch (its headers and CUDA libraries), so it runs in a venv of
its own: ``--ref-python`` names one, else ``.bench/refds-cuda`` is built on first use with
``torch==2.14.1`` (a CUDA 13.0 build; several GB) and DeepSpeed 0.19.8. ``nvcc`` must be installed
(``CUDA_HOME``, default ``/usr/local/cuda``); without it the reference half is skipped.

    python benchmarks/kernel_build_time.py [--rounds 3] [--ref-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import REFERENCE_VERSION, ROOT  # noqa: E402

CUDA_TORCH = "torch==2.14.1"
CUDA_VENV = ROOT / ".bench" / "refds-cuda"

OURS = """
import json, sys, time
t0 = time.perf_counter()
from ds_kernels._triton import aot
if not aot.nvidia_backend_available():
    sys.exit(77)
ready = time.perf_counter()
times = {}
for name in aot.VARIANTS:
    start = time.perf_counter()
    aot.compile_variant(name, arch=90)
    times[name] = time.perf_counter() - start
json.dump({"import": ready - t0, "variants": times}, sys.stdout)
"""

REFERENCE = """
import json, sys, time
t0 = time.perf_counter()
from deepspeed.ops.op_builder import FusedAdamBuilder
builder = FusedAdamBuilder()
ready = time.perf_counter()
try:
    builder.load(verbose=False)
except Exception as exc:
    json.dump({"error": f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"}, sys.stdout)
    sys.exit(0)
json.dump({"import": ready - t0, "build": time.perf_counter() - ready}, sys.stdout)
"""


def _run(python: str, code: str, env: dict[str, str]) -> dict:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode == 77:
        return {"skipped": "Triton's NVIDIA backend is not installed"}
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours_once() -> dict:
    """One cold compile of every variant in a fresh process (this checkout's ds_kernels)."""
    with tempfile.TemporaryDirectory(prefix="ds_kernels_build_") as cache:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        src = [str(ROOT / "packages" / p / "src") for p in ("ds-kernels", "ds-accel")]
        env.update(TRITON_CACHE_DIR=cache, PYTHONPATH=os.pathsep.join([*src, env.get("PYTHONPATH", "")]))
        return _run(sys.executable, OURS, env)


def reference_python(explicit: str | None) -> str:
    """An interpreter with a CUDA torch and the reference DeepSpeed (built on first use)."""
    if explicit:
        return explicit
    python = CUDA_VENV / "bin" / "python"
    probe = "import importlib.metadata as m, torch; print(m.version('deepspeed'), torch.version.cuda)"
    if python.exists():
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if (
            out.returncode == 0
            and out.stdout.split()[0] == REFERENCE_VERSION
            and out.stdout.split()[1] != "None"
        ):
            return str(python)
    print(f"[bench] building {CUDA_VENV} ({CUDA_TORCH}, deepspeed {REFERENCE_VERSION}) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(CUDA_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, CUDA_TORCH, "numpy", "ninja", "setuptools", "wheel"], check=True)
    subprocess.run(
        [*pip, "--no-build-isolation", f"deepspeed=={REFERENCE_VERSION}"],
        check=True,
        env={**os.environ, "DS_BUILD_OPS": "0"},
    )
    return str(python)


def reference_env(python: str, cuda_home: str, arch: str, extensions: str) -> dict[str, str]:
    """The environment a user of a GPU machine would build in, minus the GPU: DS_ACCELERATOR=cuda
    (DeepSpeed would otherwise pick its CPU builders here), and the pip CUDA wheels' headers on
    CPATH (torch's CUDA headers include cusparse.h, which a bare nvcc install lacks)."""
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    includes = [str(p) for p in sorted(Path(site, "nvidia").glob("cu*/include"))]
    env = dict(
        os.environ,
        DS_ACCELERATOR="cuda",
        CUDA_HOME=cuda_home,
        TORCH_CUDA_ARCH_LIST=arch,
        TORCH_EXTENSIONS_DIR=extensions,
    )
    env["CPATH"] = os.pathsep.join([*includes, *filter(None, [os.environ.get("CPATH")])])
    env["PATH"] = os.pathsep.join(
        [str(Path(cuda_home) / "bin"), str(Path(python).parent), env.get("PATH", "")]
    )
    return env


def reference_once(python: str, cuda_home: str, arch: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ds_ref_ext_") as extensions:
        return _run(python, REFERENCE, reference_env(python, cuda_home, arch, extensions))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ref-python", default=os.environ.get("DS_REFERENCE_CUDA_PYTHON"))
    args = parser.parse_args()
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    have_nvcc = (Path(cuda_home) / "bin" / "nvcc").exists()
    ref = reference_python(args.ref_python) if have_nvcc else None
    print(
        f"processor: {os.cpu_count()} cores; nvcc: {shutil.which('nvcc') or 'missing'}; reference python: {ref}"
    )

    ours, theirs = [], []
    for r in range(args.rounds):
        ours.append(ours_once())
        print(f"round {r}: ours {json.dumps(ours[-1])}")
        if ref:
            theirs.append(reference_once(ref, cuda_home, "9.0"))
            print(f"round {r}: reference (9.0) {json.dumps(theirs[-1])}")
    if any("skipped" in o or "error" in o for o in ours):
        print("ours did not compile:", ours)
        return 1
    first = statistics.median(o["import"] + o["variants"]["adam_multi_fp32"] for o in ours)
    every = statistics.median(o["import"] + sum(o["variants"].values()) for o in ours)
    print(
        f"\nours, cold, sm_90: FusedAdam's first kernel {first:.2f} s (import + compile), "
        f"all {len(ours[0]['variants'])} variants {every:.2f} s (median of {len(ours)})"
    )
    if ref:
        built = [t["import"] + t["build"] for t in theirs if "build" in t]
        if built:
            build = statistics.median(built)
            print(
                f"reference FusedAdam nvcc build (TORCH_CUDA_ARCH_LIST=9.0): {build:.2f} s (median of {len(built)})"
            )
            print(
                f"ratio: reference build / our first-use compile = {build / first:.1f}x; "
                f"/ all our variants = {build / every:.1f}x"
            )
        else:
            print("reference build failed:", theirs)
        hopper_a = reference_once(ref, cuda_home, "9.0a")
        print(f"reference with TORCH_CUDA_ARCH_LIST=9.0a: {json.dumps(hopper_a)}")
    else:
        print("reference skipped: no nvcc under CUDA_HOME")
    return 0


if __name__ == "__main__":
    sys.exit(main())
