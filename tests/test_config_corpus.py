"""DeepSpeed configs that public projects send (tests/config_corpus/, origins in its README.md) load here.

Every file the reference DeepSpeed 0.19.8 accepts must be accepted by ``deepspeed.DeepSpeedConfig``, except
the few in REFUSED_HERE, which name a feature this project does not build and must be refused with an
error naming that key. What the reference does with each file was measured with DeepSpeed 0.19.8's own
``DeepSpeedConfig`` (in a separate venv, data-parallel world size 2, "auto" values filled as Hugging Face
fills them) and is recorded in REFERENCE below, so this test needs no DeepSpeed install.

"auto" values are left as Hugging Face leaves them for the engine (our ``resolve_auto`` handles them),
except the two HF always fills from its own arguments: the micro batch and the scheduler's total steps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import deepspeed
from ds_engine.config import DeepSpeedConfigError

CORPUS = Path(__file__).parent / "config_corpus"
FILES = sorted(p.name for p in CORPUS.glob("*.json"))
WORLD_SIZE = 2

# What DeepSpeed 0.19.8's DeepSpeedConfig said about each file ("accepted", or why it refused).
REFERENCE_REFUSES = {
    "axolotl__zero1_torch_compile.json": "CompileConfig forbids 'disable' and 'backend' (extra keys)",
    "deepspeedexamples__bing_bert_lamb_seq128.json": "the 'sparse_attention' block was removed from DeepSpeed",
    "transformers__ds_config_zero3.json": "zero_optimization.reduce_bucket_size must be > 0",
}
REFERENCE = {name: REFERENCE_REFUSES.get(name, "accepted") for name in FILES}

# Accepted by DeepSpeed, refused here with a clear error: features this project does not build yet.
REFUSED_HERE: dict[str, tuple[str, str]] = {}  # AutoTP (tensor_parallel.autotp_size > 1) is built now


def _as_hf_hands_it_over(raw: dict) -> dict:
    """The config as Hugging Face's Trainer hands it to DeepSpeed: it fills the micro batch (per_device_train_
    batch_size) and the scheduler's total_num_steps from its own arguments; other "auto" values stay."""
    if raw.get("train_micro_batch_size_per_gpu") == "auto":
        raw["train_micro_batch_size_per_gpu"] = 2
    params = (raw.get("scheduler") or {}).get("params") or {}
    if params.get("total_num_steps") == "auto":
        params["total_num_steps"] = 100
    return raw


def _load(name: str) -> deepspeed.DeepSpeedConfig:
    raw = json.loads((CORPUS / name).read_text())
    return deepspeed.DeepSpeedConfig(_as_hf_hands_it_over(raw), world_size=WORLD_SIZE)


def test_corpus_size_and_readme() -> None:
    assert 20 <= len(FILES) <= 40
    readme = (CORPUS / "README.md").read_text()
    for name in FILES:
        assert f"`{name}`" in readme, f"{name} has no origin in tests/config_corpus/README.md"
    assert set(REFUSED_HERE) <= set(FILES) and set(REFERENCE_REFUSES) <= set(FILES)


@pytest.mark.parametrize("name", [n for n in FILES if REFERENCE[n] == "accepted"])
def test_what_deepspeed_accepts_is_accepted(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DS_CONFIG_STRICT", raising=False)
    if name in REFUSED_HERE:
        key, _reason = REFUSED_HERE[name]
        with pytest.raises(DeepSpeedConfigError, match=re.escape(f"'{key}' is not supported yet")):
            _load(name)
        return
    cfg = _load(name)
    batch = (cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps)
    assert batch[0] == batch[1] * batch[2] * WORLD_SIZE


def test_keys_deepspeed_ignores_are_reported_not_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DS_CONFIG_STRICT", raising=False)
    trl = _load("trl__prepare_deepspeed_zero3.json")
    assert sorted(trl.unknown_keys) == [
        "zero_optimization.reduce_bucket_size",
        "zero_optimization.stage3_param_persistence_threshold",
        "zero_optimization.stage3_prefetch_bucket_size",
    ]
    assert trl.zero_optimization.reduce_bucket_size == 500_000_000  # not applied, as in DeepSpeed
    llama = _load("llamafactory__ds_z3_fp8_config.json")
    assert sorted(llama.unknown_keys) == ["comms_config", "monitor_config"]
    assert _load("llamafactory__ds_z2_config.json").unknown_keys == []
    stage0 = _load("openinstruct__get_train_ds_config_stage0.json")  # zero_hpz_partition_size 8 at stage 0
    assert stage0.zero_optimization_stage == 0 and stage0.unknown_keys == []


def test_strict_mode_refuses_what_the_default_only_warns_about(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_CONFIG_STRICT", "1")
    with pytest.raises(DeepSpeedConfigError, match="unknown key 'cuda_visible_devices'.*strict mode"):
        _load("deepspeedexamples__imagenet_ds_fp16_z1_config.json")
    assert _load("llamafactory__ds_z2_config.json").zero_optimization_stage == 2
