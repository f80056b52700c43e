"""The autotuner spends no experiment on a ``zero_optimization`` key that has no effect in this design
(Note [key effects] in ds_engine.config.effects; ds-launch cannot import ds-engine, so this cross-package
test ties its hand-written default knobs to the engine's table)."""

from __future__ import annotations

from ds_engine.config.zero import ZERO_KEYS, ZeroConfig
from ds_launch.autotuning import space
from ds_launch.autotuning.space import DEFAULT_KNOBS, NO_EFFECT_KEYS


def _field(key: str) -> str:
    for name, field in ZeroConfig.model_fields.items():
        if key in (name, field.alias):
            return name
    raise AssertionError(f"autotuner knob {key!r} is not a zero_optimization key")


def test_default_knobs_are_all_applied_keys() -> None:
    for stage, knobs in DEFAULT_KNOBS.items():
        for key in knobs:
            effect = ZERO_KEYS[_field(key)]
            assert effect.kind == "applied", (
                f"stage {stage} tunes {key!r}, which has {effect.kind}: {effect.why}"
            )
            assert not (stage == 3 and "stage 3 units always" in effect.why), (stage, key)


def test_launcher_no_effect_keys_equal_the_table() -> None:
    table = {(ZeroConfig.model_fields[n].alias or n) for n, e in ZERO_KEYS.items() if e.kind == "no effect"}
    assert table == NO_EFFECT_KEYS


def test_user_lists_of_no_effect_keys_are_not_tuned() -> None:
    user = {
        "zero_optimization": {"stage": 2, "contiguous_gradients": [True, False], "reduce_bucket_size": [1, 2]}
    }
    grid = space.knob_grid(2, user, fast=False)
    assert len(grid) == 2 * 2 * 2  # overlap_comm x reduce_scatter x the user's two bucket sizes
    assert all("contiguous_gradients" not in dict(knobs) for knobs in grid)
