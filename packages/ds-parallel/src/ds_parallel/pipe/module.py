"""``PipelineModule``, ``LayerSpec``, ``TiedLayerSpec``: a sequence of layers split into pipeline stages.

Each rank builds only its stage's layers (a ``LayerSpec`` allocates its module on the stage that owns it).
Layers are registered under their global index (``"3"``), so a stage's ``state_dict`` names are the same
whatever the number of stages, and checkpoints (one file per layer) load at any other stage count.

Note: [tied layers] A ``TiedLayerSpec`` key names one module shared by every layer position that uses it.
Each stage holding such a position builds the module once (under ``tied_modules.<key>``). The copies start
equal (broadcast from the first owning stage) and stay equal because the copies' gradients are summed over
the tie group (the stages holding the key) after the last backward of a batch, before the step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ds_parallel.pipe.partition import partition_balanced, partition_uniform
from ds_parallel.pipe.topology import PipeDataParallelTopology, PipelineParallelGrid, ProcessTopology


class PipelineError(Exception):
    """A pipeline that cannot be built or run as configured."""


class LayerSpec:
    """A layer to build later (``typename(*module_args, **module_kwargs)``) on the stage that owns it."""

    def __init__(self, typename: type, *module_args: Any, **module_kwargs: Any) -> None:
        if not (isinstance(typename, type) and issubclass(typename, nn.Module)):
            raise RuntimeError("LayerSpec only supports torch.nn.Module types.")
        self.typename = typename
        self.module_args = module_args
        self.module_kwargs = module_kwargs

    def __repr__(self) -> str:
        return f"{self.typename.__name__}(args={self.module_args}, kwargs={self.module_kwargs})"

    def build(self, log: bool = False) -> nn.Module:
        """Allocate the module."""
        return self.typename(*self.module_args, **self.module_kwargs)


class TiedLayerSpec(LayerSpec):
    """A layer whose module (``tied_weight_attr`` parameters) is shared by every position with its ``key``."""

    def __init__(
        self,
        key: str,
        typename: type,
        *module_args: Any,
        forward_fn: Callable | None = None,
        tied_weight_attr: str | list[str] = "weight",
        **module_kwargs: Any,
    ) -> None:
        super().__init__(typename, *module_args, **module_kwargs)
        self.key = key
        self.forward_fn = forward_fn
        self.tied_weight_attr = (
            [tied_weight_attr] if isinstance(tied_weight_attr, str) else list(tied_weight_attr)
        )


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)


class PipelineModule(nn.Module):
    """Layers split into ``num_stages`` stages (DeepSpeed's constructor arguments)."""

    def __init__(
        self,
        layers: Any,
        num_stages: int | None = None,
        topology: ProcessTopology | None = None,
        loss_fn: Callable | None = None,
        seed_layers: bool = False,
        seed_fn: Callable | None = None,
        base_seed: int = 1234,
        partition_method: str = "parameters",
        activation_checkpoint_interval: int = 0,
        activation_checkpoint_func: Callable | None = None,
        checkpointable_layers: list[str] | None = None,
        dynamic_shape: bool = False,
    ) -> None:
        super().__init__()
        if num_stages is None and topology is None:
            raise RuntimeError("must provide num_stages or topology")
        if not dist.is_initialized():
            raise RuntimeError(
                "PipelineModule needs torch.distributed initialised (call deepspeed.init_distributed())"
            )
        self.global_rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.loss_fn = loss_fn
        self.seed_layers, self.seed_fn, self.base_seed = seed_layers, seed_fn, base_seed
        self.checkpointable_layers = checkpointable_layers
        self.dynamic_shape = dynamic_shape
        self.micro_offset = 0
        if topology is None:
            assert num_stages is not None  # checked above: one of the two is given
            if self.world_size % num_stages:
                raise RuntimeError(
                    f"num_stages ({num_stages}) must divide distributed world size ({self.world_size})"
                )
            topology = PipeDataParallelTopology(num_pp=num_stages, num_dp=self.world_size // num_stages)
        self._topo = topology
        self.num_stages = topology.get_dim("pipe")
        self._grid = PipelineParallelGrid(topology=topology)
        self.stage_id = self._grid.get_stage_id()
        self._layer_specs = list(layers)
        self._num_layers = len(self._layer_specs)
        self.parts = self._partition(partition_method)
        self._local_start, self._local_stop = self.parts[self.stage_id], self.parts[self.stage_id + 1]
        self.forward_funcs: list[Any] = []
        self.tied_modules = nn.ModuleDict()
        self.tied_weight_attrs: dict[str, list[str]] = {}
        self._build()
        self.activation_checkpoint_interval = activation_checkpoint_interval
        if activation_checkpoint_func is None:
            from torch.utils.checkpoint import checkpoint

            activation_checkpoint_func = partial(checkpoint, use_reentrant=False)
        self.activation_checkpoint_func = activation_checkpoint_func
        self.tied_comms = self._index_tied_modules()
        self._synchronize_tied_weights()

    # --- partitioning --------------------------------------------------------------------------------
    def _count_layer_params(self) -> list[int]:
        counts = []
        for spec in self._layer_specs:
            if isinstance(spec, LayerSpec):
                counts.append(sum(p.numel() for p in spec.build().parameters() if p.requires_grad))
            elif isinstance(spec, nn.Module):
                counts.append(sum(p.numel() for p in spec.parameters() if p.requires_grad))
            else:
                counts.append(0)
        return counts

    def _find_layer_type(self, pattern: str) -> list[int]:
        regex = re.compile(pattern, re.IGNORECASE)
        found = []
        for idx, spec in enumerate(self._layer_specs):
            name = (
                spec.typename.__name__
                if isinstance(spec, LayerSpec)
                else type(spec).__name__
                if isinstance(spec, nn.Module)
                else getattr(spec, "__name__", None)
            )
            if name is not None and regex.search(name):
                found.append(idx)
        if not found:
            raise RuntimeError(f"Partitioning '{pattern}' found no valid layers to partition.")
        return found

    def _partition(self, method: Any) -> list[int]:
        """DeepSpeed's methods: ``parameters``, ``uniform``, ``type:<regex>``; or explicit boundaries."""
        n, stages = self._num_layers, self.num_stages
        if isinstance(method, (list, tuple)):
            parts = [int(b) for b in method]
            if len(parts) != stages + 1 or parts[0] != 0 or parts[-1] != n or parts != sorted(parts):
                raise PipelineError(
                    f"explicit partition {parts}: need {stages + 1} ascending boundaries from 0 to {n}"
                )
            return parts
        method = str(method).lower()
        if method == "uniform":
            return partition_uniform(n, stages)
        if method == "parameters":
            return partition_balanced(self._count_layer_params(), stages)
        if method.startswith("type:"):
            marks = [0] * n
            for idx in self._find_layer_type(method.split(":", 1)[1]):
                marks[idx] = 1
            return partition_balanced(marks, stages)
        raise NotImplementedError(f"Partitioning method {method} not implemented.")

    # --- building ------------------------------------------------------------------------------------
    def _build(self) -> None:
        for layer_idx in range(self._local_start, self._local_stop):
            spec = self._layer_specs[layer_idx]
            if self.seed_layers:
                (self.seed_fn or _set_seed)(self.base_seed + layer_idx)
            if isinstance(spec, TiedLayerSpec):
                if spec.key not in self.tied_modules:
                    self.tied_modules[spec.key] = spec.build()
                    self.tied_weight_attrs[spec.key] = spec.tied_weight_attr
                module = self.tied_modules[spec.key]
                self.forward_funcs.append(
                    module if spec.forward_fn is None else partial(spec.forward_fn, module)
                )
            elif isinstance(spec, LayerSpec):
                module = spec.build()
                self.add_module(str(layer_idx), module)
                self.forward_funcs.append(module)
            elif isinstance(spec, nn.Module):
                self.add_module(str(layer_idx), spec)
                self.forward_funcs.append(spec)
            else:
                self.forward_funcs.append(spec)  # a function (lambda, torch.flatten...)

    # --- tied weights (Note [tied layers]) -----------------------------------------------------------
    def _index_tied_modules(self) -> dict[str, dict[str, Any]]:
        """For every tie key: the stages using it and, on each of this rank's pipelines, a group over them."""
        keys: dict[str, list[int]] = {}
        for idx, spec in enumerate(self._layer_specs):
            if isinstance(spec, TiedLayerSpec):
                stage = next(s for s in range(self.num_stages) if self.parts[s] <= idx < self.parts[s + 1])
                keys.setdefault(spec.key, [])
                if stage not in keys[spec.key]:
                    keys[spec.key].append(stage)
        comms: dict[str, dict[str, Any]] = {}
        topo = self._topo
        for key in sorted(keys):
            stages = keys[key]
            # One group per pipeline (every data/model coordinate); every rank takes part in creating all.
            for coord in sorted({c._replace(pipe=0) for c in topo.mapping}):
                ranks = [topo.get_rank(**coord._replace(pipe=s)._asdict()) for s in stages]
                group = dist.new_group(ranks) if len(ranks) > 1 else None
                if self.global_rank in ranks:
                    comms[key] = {
                        "ranks": ranks,
                        "group": group,
                        "weight_attr": self.tied_weight_attrs[key],
                        "module": self.tied_modules[key],
                        "owner": ranks[0] == self.global_rank,
                    }
        return comms

    def _tied_params(self, key: str) -> list[nn.Parameter]:
        comm = self.tied_comms[key]
        out = []
        for attr in comm["weight_attr"]:
            obj: Any = comm["module"]
            for part in attr.split("."):
                obj = getattr(obj, part)
            out.append(obj)
        return out

    def _synchronize_tied_weights(self) -> None:
        """Make every copy of a tied module's weights equal to the first owning stage's."""
        for key, comm in self.tied_comms.items():
            if comm["group"] is None:
                continue
            for p in self._tied_params(key):
                with torch.no_grad():
                    dist.broadcast(p.data, src=comm["ranks"][0], group=comm["group"])

    def get_tied_weights_and_groups(self) -> list[tuple[nn.Parameter, Any]]:
        """``(parameter, group)`` for every tied weight this stage holds."""
        return [(p, c["group"]) for k, c in self.tied_comms.items() for p in self._tied_params(k)]

    def replicated_tied_params(self) -> set[int]:
        """ids of tied weights this stage holds as a non-first copy (counted once in the gradient norm)."""
        return {id(p) for k, c in self.tied_comms.items() if not c["owner"] for p in self._tied_params(k)}

    # --- forward -------------------------------------------------------------------------------------
    def _is_checkpointable(self, funcs: list[Any]) -> bool:
        if self.checkpointable_layers is not None:
            return all(type(f).__name__ in self.checkpointable_layers for f in funcs)
        return any(len(list(f.parameters())) > 0 for f in funcs if isinstance(f, nn.Module))

    def _run(self, start: int, end: int, offset: int) -> Callable[..., Any]:
        def exec_func(*inputs: Any) -> Any:
            x: Any = inputs[0] if len(inputs) == 1 else inputs
            for idx, layer in enumerate(self.forward_funcs[start:end]):
                if self.seed_layers:  # dropout masks depend on the layer and micro-batch, not the stage count
                    (self.seed_fn or _set_seed)(self.base_seed * offset + self._local_start + start + idx)
                x = layer(x)
            return x

        return exec_func

    def forward(self, forward_input: Any) -> Any:
        """Run this stage's layers (checkpointing every ``activation_checkpoint_interval`` layers)."""
        self.micro_offset += 1
        offset = self.micro_offset + 1
        n = len(self.forward_funcs)
        if self.activation_checkpoint_interval == 0:
            return self._run(0, n, offset)(forward_input)
        x = forward_input
        for start in range(0, n, self.activation_checkpoint_interval):
            end = min(start + self.activation_checkpoint_interval, n)
            args = x if isinstance(x, tuple) else (x,)
            if self._is_checkpointable(self.forward_funcs[start:end]):
                x = self.activation_checkpoint_func(self._run(start, end, offset), *args)
            else:
                x = self._run(start, end, offset)(*args)
        return x

    # --- accessors -----------------------------------------------------------------------------------
    def partitions(self) -> list[int]:
        """The stage boundaries."""
        return self.parts

    def stage_owner(self, layer_idx: int) -> int:
        """The stage that holds layer ``layer_idx``."""
        for stage in range(self.num_stages):
            if self.parts[stage] <= layer_idx < self.parts[stage + 1]:
                return stage
        raise RuntimeError(f"Layer {layer_idx} not owned? parts={self.parts}")

    def set_checkpoint_interval(self, interval: int) -> None:
        """Checkpoint activations every ``interval`` layers (0: off)."""
        self.activation_checkpoint_interval = interval

    def topology(self) -> ProcessTopology:
        """The process topology."""
        return self._topo

    def mpu(self) -> PipelineParallelGrid:
        """The grid (DeepSpeed's ``mpu`` of a pipeline)."""
        return self._grid

    def num_pipeline_stages(self) -> int:
        """Number of stages."""
        return self.num_stages

    def local_layers(self) -> list[tuple[int, Any]]:
        """``(global index, layer)`` for this stage's layers."""
        return [(self._local_start + i, f) for i, f in enumerate(self.forward_funcs)]

    def ckpt_layer_path(self, ckpt_dir: str, local_layer_idx: int) -> str:
        """``<dir>/layer_NN[-model_XX]-model_states.pt`` (DeepSpeed's name for one layer's weights)."""
        import os

        idx = local_layer_idx + self._local_start
        path = os.path.join(ckpt_dir, f"layer_{idx:02d}")
        rank_repr = self._topo.get_rank_repr(rank=self.global_rank)
        if rank_repr:
            path += f"-{rank_repr}"
        return path + "-model_states.pt"
