"""The engine talks to every ZeRO stage through ``ds_zero.Trainer`` and ds_zero's public names only
(issue: one typed seam, so that stage internals can change without touching the engine)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import ds_engine
from ds_zero import Trainer, ZeroTrainer

SOURCES = sorted(Path(ds_engine.__file__).parent.rglob("*.py"))
TRAINER_NAMES = {name for name in dir(Trainer) if not name.startswith("_")} | set(Trainer.__annotations__)


def _trees() -> list[tuple[Path, ast.AST]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in SOURCES]


def test_no_stage_internals_are_imported() -> None:
    bad = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ds_zero.stage"):
                bad.append(f"{path.name}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Import):
                bad += [
                    f"{path.name}:{node.lineno} import {a.name}"
                    for a in node.names
                    if a.name.startswith("ds_zero.stage")
                ]
    assert not bad, bad


def _engine_optimizer(node: ast.AST) -> bool:
    """``self.optimizer`` / ``engine.optimizer`` (the trainer), not a config section named optimizer, or a
    local named ``trainer`` (what ``engine._require_optimizer(...)`` returns)."""
    if isinstance(node, ast.Name):
        return node.id == "trainer"
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "optimizer"
        and isinstance(node.value, ast.Name)
        and node.value.id in ("self", "engine")
    )


def test_the_engine_uses_only_the_trainer_protocol() -> None:
    used = {}
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _engine_optimizer(node.value):
                used.setdefault(node.attr, f"{path.name}:{node.lineno}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and _engine_optimizer(node.args[0])
            ):
                used.setdefault("<getattr>", f"{path.name}:{node.lineno}")
    outside = {name: where for name, where in used.items() if name not in TRAINER_NAMES}
    assert not outside, f"the engine reads trainer members outside ds_zero.Trainer: {outside}"
    assert {"step", "backward", "consolidated_16bit_state_dict", "sharded_state"} <= set(used)


def test_every_stage_implements_the_protocol() -> None:
    from ds_zero.stage3.trainer import Stage3Trainer
    from ds_zero.stage12 import ShardedTrainer

    for cls in (ZeroTrainer, ShardedTrainer, Stage3Trainer):
        missing = [
            name
            for name in dir(Trainer)
            if not name.startswith("_")
            and callable(getattr(Trainer, name))
            and not callable(getattr(cls, name, None))
        ]
        assert not missing, (cls.__name__, missing)
        for name in ("full_state_dict", "consolidated_16bit_state_dict", "offload_states"):
            assert (
                list(inspect.signature(getattr(cls, name)).parameters)[1:]
                == list(inspect.signature(getattr(Trainer, name)).parameters)[1:]
            ), (cls.__name__, name)
