"""Torch-free discovery of the local accelerator kind and device count.

The launcher runs before any rank and must start fast; importing torch costs about a second, so this
module answers "which accelerator, how many devices" from device nodes, sysfs, vendor tools and
``importlib.util.find_spec`` (which locates a module without importing it).

Note [probe agrees with get_accelerator]: the detection order here is the same as
``ds_accel.registry.detect()``; when a vendor runtime is installed but no device node is visible, both
fall back to the next candidate, and finally to the CPU.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess

# Accelerator name -> the environment variable that restricts which devices a process sees: the one table,
# torch-free for the launcher; the accelerator classes (Accelerator.visible_devices_envs) read it too.
VISIBLE_DEVICES_ENV: dict[str, str] = {
    "cuda": "CUDA_VISIBLE_DEVICES",
    "xpu": "ZE_AFFINITY_MASK",
    "hpu": "HABANA_VISIBLE_MODULES",
    "npu": "ASCEND_RT_VISIBLE_DEVICES",
    "mps": "",
    "cpu": "",
}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _count_visible(env_value: str | None, physical: int) -> int:
    """Apply a ``*_VISIBLE_DEVICES``-style restriction to a physical device count."""
    if env_value is None:
        return physical
    ids = [item for item in env_value.split(",") if item.strip() != ""]
    if env_value.strip() == "" or ids == ["-1"]:
        return 0
    return min(len(ids), physical) if physical else len(ids)


def _nvidia_count() -> int:
    gpus = glob.glob("/proc/driver/nvidia/gpus/*")
    if gpus:
        return len(gpus)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return 0
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return 0


def _rocm_count() -> int:
    count = 0
    for node in glob.glob("/sys/class/kfd/kfd/topology/nodes/*/gpu_id"):
        try:
            with open(node) as fh:
                if fh.read().strip() not in ("", "0"):
                    count += 1
        except OSError:
            continue
    return count


def _numa_node_count() -> int:
    nodes = glob.glob("/sys/devices/system/node/node[0-9]*")
    return max(1, len(nodes))


def _device_nodes(pattern: str) -> int:
    return len(glob.glob(pattern))


def _physical_count(name: str) -> int:
    if name == "cuda":
        return _nvidia_count() or _rocm_count()
    if name in ("xpu", "xpu.external"):
        return _device_nodes("/dev/dri/renderD*")
    if name == "hpu":
        return _device_nodes("/dev/accel/accel[0-9]*") or _device_nodes("/dev/hl[0-9]*")
    if name == "npu":
        return _device_nodes("/dev/davinci[0-9]*")
    if name == "mps":
        return 1
    return _numa_node_count()


def detect_accelerator_name() -> str:
    """Return the accelerator name DeepSpeed would pick here, without importing torch.

    ``DS_ACCELERATOR`` wins when set (validated by ``get_accelerator`` where the runtime is checked);
    otherwise vendor runtimes are tried in DeepSpeed's order (XPU, NPU, HPU, MPS, CUDA/ROCm) and the
    first one with a visible device is chosen, else the CPU.
    """
    forced = os.environ.get("DS_ACCELERATOR")
    if forced:
        return forced
    if (
        _has_module("intel_extension_for_pytorch") or _has_module("intel_extension_for_deepspeed")
    ) and _physical_count("xpu"):
        return "xpu"
    if _has_module("torch_npu") and _physical_count("npu"):
        return "npu"
    if _has_module("habana_frameworks") and _physical_count("hpu"):
        return "hpu"
    if os.uname().sysname == "Darwin" and os.uname().machine == "arm64":
        return "mps"
    if _nvidia_count() or _rocm_count():
        return "cuda"
    return "cpu"


def visible_devices_env_name(name: str | None = None) -> str:
    """The variable that restricts visible devices for ``name`` (empty string when there is none)."""
    name = name or detect_accelerator_name()
    # ROCm keeps the "cuda" name, and torch's HIP build honours CUDA_VISIBLE_DEVICES.
    return VISIBLE_DEVICES_ENV.get(name.split(".")[0], "")


def local_device_count(name: str | None = None) -> int:
    """Number of devices a launcher may use on this node, honouring the visible-devices variable.

    On the CPU this is the number of NUMA nodes (at least 1), as DeepSpeed's CPU accelerator reports.
    """
    name = name or detect_accelerator_name()
    physical = _physical_count(name)
    env_name = visible_devices_env_name(name)
    if not env_name:
        return physical
    return _count_visible(os.environ.get(env_name), physical)
