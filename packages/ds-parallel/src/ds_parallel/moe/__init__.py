"""Mixture of experts: gating (:mod:`.gating`), the MoE layer and its all-to-all dispatch (:mod:`.layer`),
expert-parallel groups (:mod:`.expert_groups`), optimizer-group helpers (:mod:`.utils`) and the engine's
expert-aware gradient reduction and checkpoint layout (:mod:`.engine_support`)."""

from ds_parallel.moe.layer import Experts, MoE, MOELayer, TopKGate

__all__ = ["Experts", "MOELayer", "MoE", "TopKGate"]
