"""The one place ``"auto"`` values are resolved.

Note: [auto] Clients such as Hugging Face fill ``"auto"`` from their own arguments before handing the
config over; whatever is still ``"auto"`` when the engine sees it means "not given", with these rules:

* batch keys (``train_batch_size``, ``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps``):
  derived from the other two by :func:`ds_engine.config.batch.reconcile_batch`;
* ``scheduler.params.warmup_max_lr``: the optimizer's learning rate;
* ``scheduler.params.total_num_steps``: an error, nothing here knows the length of training;
* ``fp16.enabled`` / ``bf16.enabled``: false (fp32 training);
* every other key: its documented default (the key is dropped);
* keys whose own vocabulary contains ``"auto"`` keep it (``data_types.keep_in_fp32_modules``,
  ``pipeline.stages``, ``zero_optimization.zenflow.select_strategy`` and its intervals).
"""

from __future__ import annotations

from typing import Any

from ds_engine.config.errors import DeepSpeedConfigError

AUTO = "auto"

_KEEP = {
    ("data_types", "keep_in_fp32_modules"),
    ("pipeline", "stages"),
    ("zero_optimization", "zenflow", "select_strategy"),
    ("zero_optimization", "zenflow", "select_interval"),
    ("zero_optimization", "zenflow", "update_interval"),
}
_REPLACE: dict[tuple[str, ...], Any] = {
    ("scheduler", "params", "warmup_max_lr"): None,
    ("fp16", "enabled"): False,
    ("bf16", "enabled"): False,
    ("bfloat16", "enabled"): False,
}
_REFUSE = {
    ("scheduler", "params", "total_num_steps"): "set the number of optimizer steps explicitly",
}


def resolve_auto(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``raw`` with every ``"auto"`` resolved per Note [auto], and a list of what was done."""
    notes: list[str] = []
    resolved = _walk(raw, (), notes)
    return resolved, notes


def _walk(node: dict[str, Any], path: tuple[str, ...], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        here = (*path, str(key))
        if isinstance(value, dict):
            out[key] = _walk(value, here, notes)
        elif isinstance(value, str) and value == AUTO and here not in _KEEP:
            dotted = ".".join(here)
            if here in _REFUSE:
                raise DeepSpeedConfigError(f"'{dotted}' is \"auto\" but cannot be inferred: {_REFUSE[here]}")
            if here in _REPLACE:
                out[key] = _REPLACE[here]
                notes.append(f"{dotted}: auto -> {_REPLACE[here]!r}")
            else:
                notes.append(f"{dotted}: auto -> default/derived")
        else:
            out[key] = value
    return out
