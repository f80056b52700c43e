"""The CPU as an accelerator: ranks are processes, memory is the process's resident set."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ds_accel.accelerators.base import Accelerator
from ds_accel.probe import local_device_count


def _proc_status_kib(field: str) -> int:
    """Read a ``VmRSS``-style field (KiB) of ``/proc/self/status``; 0 where procfs is absent."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class CPUAccelerator(Accelerator):
    _name = "cpu"
    _visible_devices_envs = ()

    def __init__(self) -> None:
        # oneCCL's torch bindings give a faster CPU backend where installed; gloo otherwise.
        has_ccl = importlib.util.find_spec("oneccl_bindings_for_pytorch") is not None
        self._communication_backend_name = "ccl" if has_ccl else "gloo"
        self._peak_reset_rss = 0

    def is_available(self) -> bool:
        return True

    def is_synchronized_device(self) -> bool:
        return True

    def device_name(self, device_index: int | None = None) -> str:
        # torch has a single CPU device; an index names a rank's slot, not a separate device.
        return "cpu"

    def device_count(self) -> int:
        # A launcher that started LOCAL_SIZE ranks on this node treats each as one "device".
        local_size = int(os.environ.get("LOCAL_SIZE", "0") or 0)
        return local_size if local_size > 0 else local_device_count("cpu")

    def current_device(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0") or 0)

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def is_bf16_supported(self) -> bool:
        return True

    def is_fp16_supported(self) -> bool:
        return True

    def manual_seed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    def initial_seed(self) -> int:
        import torch

        return int(torch.initial_seed())

    def get_rng_state(self, device_index: int | None = None) -> Any:
        import torch

        return torch.get_rng_state()

    def set_rng_state(self, new_state: Any, device_index: int | None = None) -> None:
        import torch

        torch.set_rng_state(new_state)

    def default_generator(self, device_index: int | None = None) -> Any:
        import torch

        return torch.default_generator

    def random(self) -> Any:
        import torch

        return torch.random

    # --- streams and events: torch.cpu's stand-ins (work runs in order; nothing to wait for) ---------
    @property
    def Stream(self) -> Any:  # noqa: N802 - DeepSpeed's name
        import torch

        return torch.cpu.Stream

    @property
    def Event(self) -> Any:  # noqa: N802 - DeepSpeed's name
        import torch

        return torch.cpu.Event

    def stream(self, stream: Any) -> Any:
        import torch

        return torch.cpu.stream(stream)

    def current_stream(self, device_index: int | None = None) -> Any:
        import torch

        return torch.cpu.current_stream(device_index)

    default_stream = current_stream

    def empty_cache(self) -> None:
        return None

    def memory_allocated(self, device_index: int | None = None) -> int:
        """Resident set size of this process in bytes (the CPU has no separate allocator to ask)."""
        return _proc_status_kib("VmRSS") * 1024

    def max_memory_allocated(self, device_index: int | None = None) -> int:
        """Peak resident set size in bytes (``VmHWM``)."""
        return max(_proc_status_kib("VmHWM") * 1024, self._peak_reset_rss)

    def reset_peak_memory_stats(self, device_index: int | None = None) -> None:
        # Linux resets VmHWM through /proc/self/clear_refs ("5"); fall back to remembering the RSS.
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self._peak_reset_rss = self.memory_allocated()

    # The CPU has no caching allocator: "reserved" (and DeepSpeed's older "cached") is the resident set too.
    memory_reserved = memory_allocated
    max_memory_reserved = max_memory_allocated
    memory_cached = memory_allocated
    max_memory_cached = max_memory_allocated
    reset_max_memory_allocated = reset_peak_memory_stats
    reset_max_memory_cached = reset_peak_memory_stats

    def memory_stats(self, device_index: int | None = None) -> dict[str, int]:
        return {"rss_bytes": self.memory_allocated(), "peak_rss_bytes": self.max_memory_allocated()}

    def total_memory(self, device_index: int | None = None) -> int:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def available_memory(self, device_index: int | None = None) -> int:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")

    def pin_memory(self, tensor: Any, align_bytes: int = 1) -> Any:
        # Pinning only matters for host-to-device copies; on a CPU-only run it would fail.
        return tensor

    def is_pinned(self, tensor: Any) -> bool:
        return False

    def amp(self) -> Any:
        import torch

        return torch.amp
