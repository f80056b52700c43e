"""Forward hooks on shard units: rank agreement (Note [divergence]) and forward prefetch.

Note: [divergence] In stage 3 every unit call is a collective: if one rank calls a module more often
than another (generation that stops early on one rank, a data-dependent branch), the ranks' gathers
no longer pair up and, with plain FSDP, both wait forever. Before each unit's forward (and at the end
of the root's forward, at backward and at the step) the ranks all-gather a two-number token — which
unit, which call — on a small gloo side group; if the tokens differ, every rank raises
:class:`DivergentPathError` naming the module each rank was about to gather, before any mismatched
gather is issued. The hook runs before FSDP2's own pre-forward hook (``prepend=True``).

Forward prefetch: the order units run in is recorded during the first forward (the agreement above
makes it the same on every rank); afterwards each unit, as its forward starts, also starts gathering
the units that follow it, up to ``stage3_prefetch_bucket_size`` elements.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

import ds_comm
from ds_zero.stage3.sharding import ShardedModel

END_OF_FORWARD, BACKWARD, STEP = -1, -2, -3
_PLACES = {END_OF_FORWARD: "the end of the forward pass", BACKWARD: "backward", STEP: "the optimizer step"}


class DivergentPathError(RuntimeError):
    """Ranks called different shard units (or a unit a different number of times)."""


class UnitHooks:
    """Agreement checks and forward-prefetch wiring for the units of one sharded model."""

    def __init__(self, sharded: ShardedModel, *, group: Any, prefetch_numel: int, check: bool) -> None:
        self.units = sharded.units
        self.names = [sharded.plan.names[id(u)] or f"<root {type(u).__name__}>" for u in self.units]
        self.numel = [sharded.plan.numel[id(u)] for u in self.units]
        self.prefetch_numel = prefetch_numel
        world = ds_comm.get_world_size(group)
        self.side = None
        if check and world > 1:
            ranks = [ds_comm.get_global_rank(group, r) for r in range(world)] if group is not None else None
            self.side = ds_comm.new_group(ranks=ranks, backend="gloo")
            ds_comm.at_teardown(_release_side_group(weakref.ref(self)))  # Note [exit teardown] in ds_comm
        self.world = world
        self.calls = [0] * len(self.units)
        self.order: list[int] | None = [] if prefetch_numel > 0 and len(self.units) > 1 else None
        self.handles = [
            unit.register_forward_pre_hook(partial(_before, self, i), prepend=True)
            for i, unit in enumerate(self.units)
        ]
        self.handles.append(self.units[-1].register_forward_hook(partial(_after_root, self)))

    # --- agreement ----------------------------------------------------------------------------------
    def agree(self, place: int, call: int = 0) -> None:
        """Check that every rank is at the same ``place`` (a unit index or a named point)."""
        if self.side is None:
            return
        mine = torch.tensor([place, call], dtype=torch.int64)
        every = torch.empty(2 * self.world, dtype=torch.int64)
        try:
            ds_comm.all_gather_into_tensor(every, mine, group=self.side)
        except Exception as exc:  # noqa: BLE001 - a peer that died or left: say where we were
            raise DivergentPathError(
                f"ZeRO-3: lost the other ranks while at {self._where(place, call)}: {exc}"
            ) from exc
        rows = every.view(self.world, 2).tolist()
        if any(row != [place, call] for row in rows):
            seen = ", ".join(f"rank {r} is at {self._where(*row)}" for r, row in enumerate(rows))
            raise DivergentPathError(
                f"ZeRO-3: ranks took different paths ({seen}). Every rank must call the same sharded modules "
                "the same number of times between optimizer steps (for generate(), pass synced_gpus=True)"
            )

    def _where(self, place: int, call: int) -> str:
        if place >= 0:
            return f"module '{self.names[place]}' (forward call {call} since the last step)"
        return _PLACES.get(place, f"an unknown point ({place})")

    def on_step(self) -> None:
        """Agree on the step, then start counting calls afresh."""
        self.agree(STEP)
        self.calls = [0] * len(self.units)

    # --- prefetch -------------------------------------------------------------------------------------
    def _install_prefetch(self, order: list[int]) -> None:
        root = len(self.units) - 1
        sequence = [root] + [i for i in order if i != root]
        for k, i in enumerate(sequence):
            ahead: list[FSDPModule] = []
            total = 0
            for j in sequence[k + 1 :]:
                if total + self.numel[j] > self.prefetch_numel:
                    break
                ahead.append(self.units[j])
                total += self.numel[j]
            if ahead:
                self.units[i].set_modules_to_forward_prefetch(ahead)

    def make_opaque_to_compiler(self) -> None:
        """Have ``torch.compile`` run these hooks eagerly rather than trace them, as FSDP2 marks its own:
        the agreement is a collective plus a data-dependent check, one per real call. Called by
        ``engine.compile`` (dynamo is loaded then anyway; importing it here up front would cost every run)."""
        import torch._dynamo

        for handle in self.handles:
            table = handle.hooks_dict_ref()
            if table is not None and handle.id in table:
                table[handle.id] = torch._dynamo.disable(table[handle.id])

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _before(hooks: UnitHooks, index: int, module: nn.Module, args: Any) -> None:
    hooks.calls[index] += 1
    if hooks.order is not None and index not in hooks.order:
        hooks.order.append(index)
    hooks.agree(index, hooks.calls[index])


def _after_root(hooks: UnitHooks, module: nn.Module, args: Any, output: Any) -> None:
    hooks.agree(END_OF_FORWARD)
    if hooks.order is not None:
        order, hooks.order = hooks.order, None
        hooks._install_prefetch(order)


def _release_side_group(hooks: weakref.ref) -> Any:
    """A teardown callback that drops the side group of ``hooks`` if it is still alive."""

    def release() -> None:
        alive = hooks()
        if alive is not None:
            alive.side = None

    return release
