"""Sessions: the whole suite, each package alone, the accelerator matrix, lint, demo and bench.

`nox -t ci` is what `.ci/run` and the README's test command run: the whole suite on CPU, split so
that nothing runs twice: every package's tests in a venv of its own holding only that package's
declared dependencies (`package`), the cross-package tests with everything installed
(`integration`), the fault-injection suite (`faults`: every test marked ``faults``), the third-party
clients (`clients`: Hugging Face Trainer, Accelerate, Lightning, installed as test-only
dependencies), and lint. `nox -s tests` runs the first two in one venv.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox
import tomllib

ROOT = Path(__file__).parent
PACKAGES = ["ds-accel", "ds-comm", "ds-parallel", "ds-kernels", "ds-zero", "ds-engine", "ds-launch"]
# Optional extras each package's own tests exercise (mpi4py for MPI discovery, triton for kernels).
PACKAGE_TEST_EXTRAS = {"ds-accel": "torch", "ds-comm": "mpi", "ds-kernels": "test", "ds-zero": "safetensors"}
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.3", "numpy", "packaging"]
# The third-party clients `tests/clients` drives (test-only dependencies), at the versions verified.
CLIENT_DEPS = [
    "transformers==5.24.0",
    "accelerate==1.15.0",
    "lightning==2.6.6",
    "safetensors",
    "trl==1.16.0",
    "peft==0.21.2",
]
# Monitors the engine's monitoring tests read back (TensorBoard, W&B offline, Comet offline): test-only.
MONITOR_DEPS = ["tensorboard>=2.10", "wandb>=0.15", "comet_ml>=3.41.0"]
# Debian packages the real-process tests use: binary -> package.
# The paths are files, not PATH lookups: sshd and ip live in sbin, which a CI user's PATH may lack.
SYSTEM_PACKAGES = {
    "mpirun": "openmpi-bin",
    "pdsh": "pdsh",
    "/usr/sbin/sshd": "openssh-server",
    "/usr/bin/ssh": "openssh-client",
    "/usr/sbin/ip": "iproute2",
}

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]  # plain `nox`: the whole suite in one venv, and lint


def _cuda_torch_present() -> bool:
    """A CUDA build of torch already importable by this interpreter (the GPU machine has one)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None


def _install_torch(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "torch")


def _local_deps(package: str) -> list[str]:
    """`package` and every ds-* package it depends on, transitively, as install paths."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        meta = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())
        for dep in meta["project"]["dependencies"]:
            dep_name = dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip()
            if dep_name.startswith("ds-"):
                visit(dep_name)
        order.append(name)

    visit(package)
    return order


def _install_everything(session: nox.Session) -> None:
    _install_torch(session)
    editable = []
    for name in PACKAGES:
        extra = PACKAGE_TEST_EXTRAS.get(name)
        editable += ["-e", f"packages/{name}" + (f"[{extra}]" if extra else "")]
    session.install("-c", "constraints.txt", *editable, "-e", ".", *TEST_DEPS, *MONITOR_DEPS)


def _ensure_system_packages(session: nox.Session) -> None:
    """Install the Debian packages of SYSTEM_PACKAGES with apt-get when missing and we are root (as in CI)."""
    missing = [
        pkg
        for binary, pkg in SYSTEM_PACKAGES.items()
        if (not os.path.exists(binary) if binary.startswith("/") else shutil.which(binary) is None)
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.warn(f"missing {', '.join(missing)}: the tests that need them will skip")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run(
        "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, external=True, env=env
    )


def _pytest(
    session: nox.Session, *paths: str, marker: str = "not cuda and not faults and not multinode"
) -> None:
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        marker,
        *paths,
        *session.posargs,
        env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite on CPU in one venv: every package's tests and the cross-package tests."""
    _ensure_system_packages(session)
    _install_everything(session)
    _pytest(session, *[f"packages/{p}/tests" for p in PACKAGES], "tests", marker="not cuda")


@nox.session(tags=["ci"])
def integration(session: nox.Session) -> None:
    """The cross-package tests (`tests/`): real training, real launcher runs, compatibility."""
    _ensure_system_packages(session)
    _install_everything(session)
    _pytest(session, "tests")


@nox.session(tags=["ci"])
@nox.parametrize("package", PACKAGES)
def package(session: nox.Session, package: str) -> None:
    """One package alone, with only its declared dependencies: proves the narrow interfaces."""
    _ensure_system_packages(session)
    _install_torch(session)
    chain = _local_deps(package)
    targets = [f"packages/{name}" for name in chain]
    extra = PACKAGE_TEST_EXTRAS.get(package)
    if extra:
        targets[-1] += f"[{extra}]"
    session.install("-c", "constraints.txt", *targets, *TEST_DEPS)
    # Installed non-editable, and run from a folder where the sources are not importable by path.
    _pytest(session, str(ROOT / "packages" / package / "tests"))


@nox.session(tags=["ci"])
def faults(session: nox.Session) -> None:
    """The fault-injection suite (tests marked ``faults`` in every package and in ``tests/``): crashing,
    hanging and signalled ranks, kill during save, a full disk, corrupt and malicious checkpoints,
    non-finite gradients, misuse of the training API and bad input, each injected for real."""
    _ensure_system_packages(session)
    _install_everything(session)
    _pytest(
        session,
        *[f"packages/{p}/tests" for p in PACKAGES],
        "tests",
        marker="faults and not cuda and not multinode",
    )


@nox.session(tags=["ci"])
def multinode(session: nox.Session) -> None:
    """Multi-node launches across network-namespace hosts, each with its own sshd (tests marked
    ``multinode``): pdsh over ssh, mpirun, --no_ssh, a failing rank and a lost host. Needs root; the
    tests skip with the reason where namespaces cannot be made."""
    _ensure_system_packages(session)
    _install_everything(session)
    _pytest(session, "tests/launch", marker="multinode and not cuda")


@nox.session
def cpu(session: nox.Session) -> None:
    """Accelerator matrix, CPU entry: the whole suite (same as `tests`)."""
    tests(session)


@nox.session(venv_params=["--system-site-packages"])
def cuda(session: nox.Session) -> None:
    """Accelerator matrix, CUDA entry: the GPU-marked tests. Skips cleanly where no GPU is present."""
    if not _cuda_torch_present():
        _install_torch(session)
    editable = [arg for name in PACKAGES for arg in ("-e", f"packages/{name}")]
    session.install("--no-deps", *editable, "-e", ".")
    session.install("pydantic>=2.5", "typer>=0.12", *TEST_DEPS)
    _pytest(session, *[f"packages/{p}/tests" for p in PACKAGES], "tests", marker="cuda")


@nox.session(tags=["ci"])
def clients(session: nox.Session) -> None:
    """Hugging Face Trainer, Accelerate and PyTorch Lightning run unchanged on this `deepspeed`
    (`tests/clients`: 2 CPU ranks each, launched as users launch them), and the parallelism tests built on
    transformers' models (they skip in the sessions without it, faults included, so they all run here)."""
    _install_everything(session)
    session.install("-c", "constraints.txt", *CLIENT_DEPS)
    _pytest(session, "tests/clients")
    _pytest(session, *_needing_transformers(ROOT / "tests" / "parallel"), marker="not cuda and not multinode")


def _needing_transformers(folder: Path) -> list[str]:
    """Test files in ``folder`` that skip without transformers (``pytest.importorskip("transformers")``)."""
    return [
        str(p) for p in sorted(folder.glob("test_*.py")) if 'importorskip("transformers")' in p.read_text()
    ]


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff (lint rules and the formatter's check) over the whole tree; mypy over the packages listed in
    pyproject.toml's [tool.mypy]."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")  # `ruff format .` rewrites a file that fails this
    # torch and pydantic are installed so mypy checks against their real types (and loads pydantic's plugin).
    _install_torch(session)
    session.install("-c", "constraints.txt", "mypy>=1.10", "pydantic>=2.5", "typer>=0.12")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's demo: a small GPT trained on 2 CPU ranks through the `deepspeed` launcher, with a
    checkpoint saved at the end; then the same 2 ranks resume from it."""
    _install_everything(session)
    ckpt = session.create_tmp() + "/gpt_ckpt"
    train = [
        "deepspeed",
        "--num_gpus",
        "2",
        "examples/gpt/train.py",
        "--deepspeed",
        "--deepspeed_config",
        "examples/gpt/ds_config.json",
        "--save_dir",
        ckpt,
    ]
    env = {"OMP_NUM_THREADS": "1"}
    session.run(*train, "--steps", "40", env=env)
    session.run(*train, "--steps", "60", "--resume", env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against the reference DeepSpeed (own venv) and plain PyTorch."""
    _install_everything(session)
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        if script.name.startswith("_") or script.name.endswith("_gpu.py"):
            continue
        session.log(f"--- {script.name}")
        session.run("python", str(script), env={"PYTHONUNBUFFERED": "1"})


if __name__ == "__main__":
    sys.exit("run with `nox`")
