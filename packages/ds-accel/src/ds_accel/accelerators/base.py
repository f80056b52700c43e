"""The accelerator interface: one small object per device kind, with DeepSpeed's method names.

Most device kinds expose the same API through a ``torch.<kind>`` namespace (``torch.cuda``,
``torch.xpu``, ``torch.npu`` after ``import torch_npu``, ...), so :class:`TorchDeviceAccelerator`
implements the interface once on top of that namespace; subclasses only name their kind, backend,
vendor import and visible-devices variable, and override what differs.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from ds_accel import op_builders


class Accelerator:
    """Abstract device API used by every other package. Subclasses fill in the device kind."""

    #: DeepSpeed's accelerator name (``get_accelerator()._name``).
    _name: str = ""
    #: torch.distributed backend this accelerator uses by default.
    _communication_backend_name: str = "gloo"
    #: Variable(s) that restrict the devices a process sees; empty where the kind has none.
    _visible_devices_envs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self._name

    # --- identity -------------------------------------------------------------------------------
    def device_name(self, device_index: int | None = None) -> str:
        """``"cuda"`` or ``"cuda:<i>"``: the torch device string for this kind."""
        return self._name if device_index is None else f"{self._name}:{device_index}"

    def device(self, device_index: int | None = None) -> Any:
        import torch

        return torch.device(self.device_name(device_index))

    def current_device_name(self) -> str:
        return self.device_name(self.current_device())

    def communication_backend_name(self) -> str:
        return self._communication_backend_name

    def is_synchronized_device(self) -> bool:
        """True where kernels complete before the call returns (CPU): no streams or events to wait on."""
        return False

    def use_host_timers(self) -> bool:
        return self.is_synchronized_device()

    def resolves_data_dependency(self) -> bool:
        return self.is_synchronized_device()

    def handles_memory_backpressure(self) -> bool:
        return self.is_synchronized_device()

    def on_accelerator(self, tensor: Any) -> bool:
        return tensor.device.type == self._name

    # --- visible devices (used by launchers) -----------------------------------------------------
    def visible_devices_envs(self) -> list[str]:
        return list(self._visible_devices_envs)

    def set_visible_devices_envs(
        self, current_env: MutableMapping[str, str], local_accelerator_ids: Sequence[int]
    ) -> None:
        """Restrict a child process's environment to ``local_accelerator_ids``."""
        value = ",".join(str(i) for i in local_accelerator_ids)
        for env in self._visible_devices_envs:
            current_env[env] = value

    # --- to be provided by subclasses --------------------------------------------------------------
    def is_available(self) -> bool:
        raise NotImplementedError

    def device_count(self) -> int:
        raise NotImplementedError

    def current_device(self) -> int:
        raise NotImplementedError

    def set_device(self, device_index: int) -> None:
        raise NotImplementedError

    def synchronize(self, device_index: int | None = None) -> None:
        raise NotImplementedError

    def is_bf16_supported(self) -> bool:
        raise NotImplementedError

    def is_fp16_supported(self) -> bool:
        raise NotImplementedError

    def pin_memory(self, tensor: Any, align_bytes: int = 1) -> Any:
        """``tensor`` in page-locked host memory (where the kind has no pinning: ``tensor`` itself)."""
        raise NotImplementedError

    def is_pinned(self, tensor: Any) -> bool:
        raise NotImplementedError

    def supported_dtypes(self) -> list[Any]:
        import torch

        dtypes = [torch.float32]
        if self.is_fp16_supported():
            dtypes.append(torch.float16)
        if self.is_bf16_supported():
            dtypes.append(torch.bfloat16)
        return dtypes

    # --- RNG and memory (every kind provides them; the engine calls them on any accelerator) -----------
    def manual_seed(self, seed: int) -> None:
        raise NotImplementedError

    def get_rng_state(self, device_index: int | None = None) -> Any:
        raise NotImplementedError

    def set_rng_state(self, new_state: Any, device_index: int | None = None) -> None:
        raise NotImplementedError

    def empty_cache(self) -> None:
        raise NotImplementedError

    def memory_allocated(self, device_index: int | None = None) -> int:
        raise NotImplementedError

    def max_memory_allocated(self, device_index: int | None = None) -> int:
        raise NotImplementedError

    def memory_reserved(self, device_index: int | None = None) -> int:
        raise NotImplementedError

    def max_memory_reserved(self, device_index: int | None = None) -> int:
        raise NotImplementedError

    def reset_peak_memory_stats(self, device_index: int | None = None) -> None:
        raise NotImplementedError

    def total_memory(self, device_index: int | None = None) -> int:
        raise NotImplementedError

    # --- typed tensor constructors (DeepSpeed's ``get_accelerator().LongTensor(data)``) ----------------
    def _tensor_ctor(self, dtype_name: str) -> Any:
        """``torch.tensor`` bound to a dtype and to this accelerator's (current) device."""
        import torch

        return functools.partial(torch.tensor, dtype=getattr(torch, dtype_name), device=self.device_name())

    @property
    def BFloat16Tensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._tensor_ctor("bfloat16")

    @property
    def ByteTensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._tensor_ctor("uint8")

    @property
    def DoubleTensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._tensor_ctor("float64")

    @property
    def FloatTensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._tensor_ctor("float32")

    @property
    def HalfTensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._tensor_ctor("float16")

    @property
    def IntTensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._tensor_ctor("int32")

    @property
    def LongTensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._tensor_ctor("int64")

    # --- profiling ranges, lazy initialisation ----------------------------------------------------
    def range_push(self, msg: str, domain: Any = None, category: Any = None) -> Any:
        """Open a named profiler range (a no-op where the device has no range API)."""
        return None

    def range_pop(self, domain: Any = None) -> Any:
        """Close the innermost profiler range (a no-op where the device has no range API)."""
        return None

    def lazy_call(self, callback: Any) -> Any:
        """Run ``callback`` once the device runtime is initialised (at once where there is none to wait for)."""
        return callback()

    def is_triton_supported(self) -> bool:
        """Whether Triton kernels can run on this device."""
        return False

    # --- op builders (see ds_accel.op_builders) ---------------------------------------------------
    def op_builder_dir(self) -> str:
        """The importable module holding this accelerator's op builder classes."""
        return op_builders.op_builder_dir()

    def get_op_builder(self, class_name: str) -> Any:
        """The op builder class called ``class_name`` (e.g. ``"CPUAdamBuilder"``), None if unknown."""
        return op_builders.get_op_builder(class_name)

    def create_op_builder(self, class_name: str) -> Any:
        """An instance of the op builder called ``class_name``, None if unknown."""
        return op_builders.create_op_builder(class_name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, backend={self._communication_backend_name!r})"


class TorchDeviceAccelerator(Accelerator):
    """An accelerator whose runtime lives in a ``torch.<module>`` namespace."""

    #: Attribute of ``torch`` holding the device API (``"cuda"``, ``"xpu"``, ...).
    _torch_module: str = ""
    #: Module imported before use, registering the device with torch (``torch_npu``, ...).
    _vendor_import: str | None = None

    def __init__(self) -> None:
        if self._vendor_import:
            importlib.import_module(self._vendor_import)

    @property
    def _mod(self) -> Any:
        import torch

        return getattr(torch, self._torch_module)

    def is_available(self) -> bool:
        try:
            return bool(self._mod.is_available())
        except (AttributeError, RuntimeError):
            return False

    def device_count(self) -> int:
        return int(self._mod.device_count())

    def current_device(self) -> int:
        return int(self._mod.current_device())

    def set_device(self, device_index: int) -> None:
        self._mod.set_device(device_index)

    def synchronize(self, device_index: int | None = None) -> None:
        self._mod.synchronize(device_index)

    def is_bf16_supported(self) -> bool:
        check = getattr(self._mod, "is_bf16_supported", None)
        return bool(check()) if check else True

    def is_fp16_supported(self) -> bool:
        return True

    # --- RNG ----------------------------------------------------------------------------------------
    def manual_seed(self, seed: int) -> None:
        self._mod.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        self._mod.manual_seed_all(seed)

    def initial_seed(self) -> int:
        return int(self._mod.initial_seed())

    def default_generator(self, device_index: int) -> Any:
        return self._mod.default_generators[device_index]

    def random(self) -> Any:
        import torch

        return torch.random

    def get_rng_state(self, device_index: int | None = None) -> Any:
        return self._mod.get_rng_state() if device_index is None else self._mod.get_rng_state(device_index)

    def set_rng_state(self, new_state: Any, device_index: int | None = None) -> None:
        if device_index is None:
            self._mod.set_rng_state(new_state)
        else:
            self._mod.set_rng_state(new_state, device_index)

    # --- streams and events -------------------------------------------------------------------------
    @property
    def Stream(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._mod.Stream

    @property
    def Event(self) -> Any:  # noqa: N802 - DeepSpeed's name
        return self._mod.Event

    def stream(self, stream: Any) -> Any:
        return self._mod.stream(stream)

    def current_stream(self, device_index: int | None = None) -> Any:
        return self._mod.current_stream(device_index)

    def default_stream(self, device_index: int | None = None) -> Any:
        return self._mod.default_stream(device_index)

    # --- memory ---------------------------------------------------------------------------------------
    def empty_cache(self) -> None:
        self._mod.empty_cache()

    def memory_allocated(self, device_index: int | None = None) -> int:
        return int(self._mod.memory_allocated(device_index))

    def max_memory_allocated(self, device_index: int | None = None) -> int:
        return int(self._mod.max_memory_allocated(device_index))

    def reset_peak_memory_stats(self, device_index: int | None = None) -> None:
        self._mod.reset_peak_memory_stats(device_index)

    def memory_reserved(self, device_index: int | None = None) -> int:
        return int(self._mod.memory_reserved(device_index))

    def max_memory_reserved(self, device_index: int | None = None) -> int:
        return int(self._mod.max_memory_reserved(device_index))

    memory_cached = memory_reserved
    max_memory_cached = max_memory_reserved

    def reset_max_memory_allocated(self, device_index: int | None = None) -> None:
        self._mod.reset_peak_memory_stats(device_index)

    reset_max_memory_cached = reset_max_memory_allocated

    def memory_stats(self, device_index: int | None = None) -> Mapping[str, Any]:
        return self._mod.memory_stats(device_index)

    def total_memory(self, device_index: int | None = None) -> int:
        index = self.current_device() if device_index is None else device_index
        return int(self._mod.get_device_properties(index).total_memory)

    def available_memory(self, device_index: int | None = None) -> int:
        free, _total = self._mod.mem_get_info(device_index)
        return int(free)

    def pin_memory(self, tensor: Any, align_bytes: int = 1) -> Any:
        return tensor.pin_memory()

    def is_pinned(self, tensor: Any) -> bool:
        return bool(tensor.is_pinned())

    def amp(self) -> Any:
        import torch

        return torch.amp

    # --- profiling ranges, lazy initialisation ----------------------------------------------------
    def range_push(self, msg: str, domain: Any = None, category: Any = None) -> Any:
        nvtx = getattr(self._mod, "nvtx", None)
        return nvtx.range_push(msg) if nvtx is not None else None

    def range_pop(self, domain: Any = None) -> Any:
        nvtx = getattr(self._mod, "nvtx", None)
        return nvtx.range_pop() if nvtx is not None else None

    def lazy_call(self, callback: Any) -> Any:
        lazy = getattr(self._mod, "_lazy_call", None)
        return lazy(callback) if lazy is not None else callback()

    def is_triton_supported(self) -> bool:
        import importlib.util

        return self.is_available() and importlib.util.find_spec("triton") is not None
