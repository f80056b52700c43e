"""``deepspeed.zero.Init``: build a model that never holds its whole parameter set on one rank.

Inside the context, every ``nn.Module`` subclass's ``__init__`` is wrapped: when the *outermost*
``__init__`` of a module returns (so the user's own initialisation of it, including a subclass's
extra init after ``super().__init__()``, has run), each of its parameters not yet partitioned is
split: rank 0's value is scattered in equal flat partitions, this rank keeps its partition in
``param.ds_tensor`` (on ``remote_device``, in ``dtype``), and ``param.data`` becomes an empty tensor, as
in DeepSpeed. Children finish before their parents, so at any moment a rank holds the partitions
built so far plus the full parameters of one module under construction.

Wrapping the model later (ZeRO stage 3) gathers each shard unit from these partitions just before
sharding it again (:mod:`ds_zero.stage3.sharding`). ``GatheredParameters`` reads and writes them.

Tensor constructors are *not* redirected (DeepSpeed moves ``torch.empty`` & co. to the accelerator
inside the context); the module-level ``_orig_torch_*`` names and the wrapper helpers exist for
clients that patch around the context, and construction happens where the user asks.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import ds_comm
from ds_zero.policy import ParamNvmePolicy
from ds_zero.stage3 import shards
from ds_zero.stage3.nvme_params import InitNvmeStore
from ds_zero.stage3.status import ZeroParamStatus, mark, zero_param

_orig_torch_tensor = torch.tensor
_orig_torch_empty = torch.empty
_orig_torch_zeros = torch.zeros
_orig_torch_ones = torch.ones
_orig_torch_full = torch.full
_orig_torch_arange = torch.arange
_orig_torch_eye = torch.eye
_orig_torch_randn = torch.randn


def _local_device() -> torch.device:
    from ds_accel import get_accelerator

    return torch.device(get_accelerator().device_name(int(os.environ.get("LOCAL_RANK", "0"))))


def zero_wrapper_for_fp_tensor_constructor(
    fn: Callable[..., Tensor], target_fp_dtype: torch.dtype, target_device: torch.device | None = None
) -> Callable[..., Tensor]:
    """``fn`` (a tensor constructor) creating on the local accelerator, floating results in ``target_fp_dtype``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Tensor:
        if kwargs.get("device") is None:
            kwargs["device"] = target_device or _local_device()
        tensor = fn(*args, **kwargs)
        return tensor.to(target_fp_dtype) if tensor.is_floating_point() else tensor

    return wrapped


def get_new_tensor_fn_for_dtype(
    dtype: torch.dtype, device: torch.device | None = None
) -> Callable[..., Tensor]:
    """A ``Tensor.new_tensor``-style constructor on the local accelerator with floating results in ``dtype``."""

    def new_tensor(cls: Any, *args: Any, **kwargs: Any) -> Tensor:
        tensor = _orig_torch_empty(0, device=device or _local_device()).new_empty(*(args or (0,)))
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    return new_tensor


# --- config ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitConfig:
    """What ``zero.Init`` takes from a DeepSpeed config, already validated.

    Note: [zero.Init config] ds_zero never reads config JSON (it cannot import ds-engine, whose pydantic
    models are the one validator): ``deepspeed.zero.Init`` (:class:`ds_engine.zero_init.Init`) validates
    ``config_dict_or_path`` with the engine's models and passes this value in. ``dtype``: the fp16/bf16
    sections' dtype (fp32 when neither is on); ``offload_device``: ``zero_optimization.offload_param.device``
    when that section is present (it then overrides ``remote_device`` and ``pin_memory``, as in DeepSpeed).
    """

    dtype: torch.dtype = torch.float32
    offload_device: str | None = None
    pin_memory: bool = True
    nvme_path: str = ""
    """``offload_param.nvme_path``: where ``remote_device="nvme"`` writes the partitions."""


def _config_of(source: Any) -> InitConfig | None:
    if source is None or isinstance(source, InitConfig):
        return source
    raise TypeError(
        f"ds_zero's zero.Init takes a validated InitConfig, got {type(source).__name__}: pass a "
        "config dict or path through deepspeed.zero.Init, which validates it (Note [zero.Init config])"
    )


def choose_dtype(dtype: torch.dtype | None, cfg: InitConfig | None) -> torch.dtype:
    """DeepSpeed's rule: ``dtype`` if given; else the config's precision; else fp16/bf16/fp32, the
    first the accelerator supports."""
    if dtype is not None:
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(
                f"zero.Init(dtype={dtype}): expected torch.float16, torch.bfloat16 or torch.float32"
            )
        return dtype
    if cfg is not None:
        return cfg.dtype
    from ds_accel import get_accelerator

    accel = get_accelerator()
    if accel.is_fp16_supported():
        return torch.float16
    return torch.bfloat16 if accel.is_bf16_supported() else torch.float32


def choose_placement(
    remote_device: Any, pin_memory: bool, cfg: InitConfig | None, group: Any
) -> tuple[torch.device, bool]:
    """Where partitions live and whether pinned: the config's ``offload_param`` when present (as in
    DeepSpeed, it overrides the arguments), else ``remote_device`` and ``pin_memory``."""
    if cfg is not None and cfg.offload_device is not None:
        remote_device, pin_memory = cfg.offload_device, cfg.pin_memory
    name = str(remote_device) if remote_device is not None else "none"
    if name in ("cpu", "nvme"):  # nvme: each partition is made on the CPU, then written out (_partition)
        return torch.device("cpu"), pin_memory and torch.cuda.is_available()
    if name in ("none", "None"):
        return shards.comm_device(group), False
    return torch.device(name), False


# --- the context ----------------------------------------------------------------------------------
_ACTIVE: list[Init] = []
_PATCHED: dict[type[nn.Module], Callable[..., None]] = {}
_ORIG_INIT_SUBCLASS = nn.Module.__dict__.get("__init_subclass__")


def _all_subclasses(cls: type[nn.Module]) -> list[type[nn.Module]]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def _wrap(cls: type[nn.Module]) -> None:
    orig = cls.__dict__.get("__init__")
    if orig is None or cls in _PATCHED or not inspect.isfunction(orig):
        return

    @functools.wraps(orig)
    def init(module: nn.Module, *args: Any, **kwargs: Any) -> None:
        if not _ACTIVE:
            return orig(module, *args, **kwargs)
        ctx = _ACTIVE[-1]
        key = id(module)
        ctx._depth[key] = ctx._depth.get(key, 0) + 1
        try:
            orig(module, *args, **kwargs)
        finally:
            ctx._depth[key] -= 1
            if not ctx._depth[key]:
                del ctx._depth[key]
        if key not in ctx._depth:  # the outermost __init__ of this module has returned
            ctx.partition(module)

    _PATCHED[cls] = orig
    # patching classes is Init's mechanism; mypy refuses assignments to methods
    cls.__init__ = init  # type: ignore[method-assign,assignment]


def _on_subclass(cls: type[nn.Module], **kwargs: Any) -> None:
    super(nn.Module, cls).__init_subclass__(**kwargs)
    _wrap(cls)


class Init:
    """Partition parameters as modules are built (see the module docstring). DeepSpeed's signature;
    ``mem_efficient_linear`` is accepted and has no effect (units are gathered whole)."""

    def __init__(
        self,
        module: nn.Module | None = None,
        data_parallel_group: Any = None,
        mem_efficient_linear: bool = True,
        remote_device: Any = None,
        pin_memory: bool = False,
        config_dict_or_path: Any = None,
        config: Any = None,
        enabled: bool = True,
        dtype: torch.dtype | None = None,
        mpu: Any = None,
        zero_param_parallel_group: Any = None,
        zero_quantized_weights: bool = False,
        zero_quantized_nontrainable_weights: bool = False,
        sequence_data_parallel_group: Any = None,
        param_swapper: Any = None,
    ) -> None:
        self.enabled = enabled
        self._depth: dict[int, int] = {}
        if not enabled:
            return
        for name, value in (
            ("zero_param_parallel_group", zero_param_parallel_group),
            ("zero_quantized_weights", zero_quantized_weights),
            ("zero_quantized_nontrainable_weights", zero_quantized_nontrainable_weights),
            ("param_swapper", param_swapper),
        ):
            if value:
                raise NotImplementedError(f"zero.Init({name}=...) is not supported")
        if not ds_comm.is_initialized():
            ds_comm.init_distributed(verbose=False)
        cfg = _config_of(config_dict_or_path if config_dict_or_path is not None else config)
        if mpu is not None and data_parallel_group is None:
            data_parallel_group = mpu.get_data_parallel_group()
        self.ds_process_group = data_parallel_group or sequence_data_parallel_group
        self.dtype = choose_dtype(dtype, cfg)
        self.remote_device, self.pin_memory = choose_placement(
            remote_device, pin_memory, cfg, self.ds_process_group
        )
        self.nvme_store: InitNvmeStore | None = None
        placed = cfg.offload_device if cfg is not None and cfg.offload_device is not None else remote_device
        if str(placed) == "nvme":
            # Note [parameter swapping] in ds_zero.stage3.nvme_params: partitions on NVMe as they are made
            self.pin_memory = False
            self.nvme_store = InitNvmeStore(
                ParamNvmePolicy(path=cfg.nvme_path if cfg is not None else ""), ds_comm.get_rank()
            )
        group = self.ds_process_group
        self.src = ds_comm.get_global_rank(group, 0) if group is not None else 0
        if module is not None:
            self.partition(module)

    def partition(self, module: nn.Module) -> None:
        """Partition every parameter of ``module`` that is still whole (every rank must call it)."""
        seen = set()
        for p in module.parameters():
            if (
                id(p) in seen
                or shards.is_init_shard(p)
                or shards.is_unit_shard(p)
                or getattr(p, "ds_persist", False)
            ):
                continue
            seen.add(id(p))
            self._partition(p)

    @torch.no_grad()
    def _partition(self, param: nn.Parameter) -> None:
        full = param.data
        if full.is_floating_point() and full.dtype != self.dtype:
            full = full.to(self.dtype)
        local = shards.scatter_flat(
            full.to(shards.comm_device(self.ds_process_group)),
            group=self.ds_process_group,
            src=self.src,
            device=self.remote_device,
        )
        if self.pin_memory:
            local = local.pin_memory()
        zero_param(param).ds_tensor = local
        if self.nvme_store is not None:
            self.nvme_store.put(param, local)
        param.data = torch.empty(0, dtype=local.dtype, device=local.device)
        mark(
            param,
            shape=full.shape,
            group=self.ds_process_group,
            persist=False,
            status=ZeroParamStatus.NOT_AVAILABLE,
        )

    def __enter__(self) -> Init:
        if not self.enabled:
            return self
        if not _ACTIVE:
            for cls in _all_subclasses(nn.Module):
                _wrap(cls)
            # classes defined inside the context (patching nn.Module is Init's mechanism, not a typed call)
            nn.Module.__init_subclass__ = classmethod(_on_subclass)  # type: ignore[method-assign,assignment]
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            return
        _ACTIVE.remove(self)
        if _ACTIVE:
            return
        for cls, orig in _PATCHED.items():
            cls.__init__ = orig  # type: ignore[method-assign]  # putting back what _wrap patched
        _PATCHED.clear()
        if _ORIG_INIT_SUBCLASS is None:
            del nn.Module.__init_subclass__
        else:
            nn.Module.__init_subclass__ = _ORIG_INIT_SUBCLASS  # type: ignore[method-assign]
