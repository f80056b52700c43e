"""``docs/config-reference.md`` is generated from ``ds_engine.config`` and committed: it must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _generator():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_is_current() -> None:
    generator = _generator()
    assert generator.main(["--check"]) == 0, "run: python docs/gen_config_reference.py"


def test_reference_lists_every_section_and_deepspeeds_key_spellings() -> None:
    from ds_engine.config import DeepSpeedConfigModel

    text = _generator().render()
    for key in DeepSpeedConfigModel.model_fields:
        assert f"`{key}`" in text, key
    assert "## `zero_optimization.offload_optimizer`" in text
    assert "`stage3_param_persistence_threshold`" in text  # DeepSpeed's alias, not our field name
    assert "`thread_count`" in text  # an older spelling the aio section also accepts


def test_zero_keys_carry_their_effect_from_the_table() -> None:
    from ds_engine.config.zero import ZERO_KEYS

    text = _generator().render()
    section = text.split("## `zero_optimization`\n", 1)[1].split("\n## ", 1)[0]
    assert section.count("\n| `") + section.count("\n| [`") == len(ZERO_KEYS)
    assert "| `contiguous_gradients` | bool | `true` |" in section
    assert "no effect: gradients are always copied into one contiguous buffer" in section
    assert (
        "applied (ds_engine.zero_policy:policy_from_config, ds_zero.grad_reducer:GradReducer.__init__)"
        in section
    )
