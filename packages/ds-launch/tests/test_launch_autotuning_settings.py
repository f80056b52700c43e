"""The ``autotuning`` section and the config argument, read without the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ds_launch.autotuning.settings import (
    TuningSettings,
    find_config_argument,
    load_user_config,
    parse_settings,
    settings_keys,
)
from ds_launch.errors import LaunchError


def test_defaults_are_deepspeeds():
    s = parse_settings({"enabled": True})
    assert (s.fast, s.results_dir, s.exps_dir, s.overwrite) == (
        True,
        "autotuning_results",
        "autotuning_exps",
        True,
    )
    assert (s.start_profile_step, s.end_profile_step, s.metric, s.tuner_type) == (
        3,
        5,
        "throughput",
        "gridsearch",
    )
    assert (s.tuner_early_stopping, s.tuner_num_trials, s.num_tuning_micro_batch_sizes) == (5, 50, 3)
    assert (s.min_train_micro_batch_size_per_gpu, s.max_train_micro_batch_size_per_gpu, s.mp_size) == (
        1,
        1024,
        1,
    )
    assert parse_settings(None) == TuningSettings()
    assert parse_settings({}).arg_mappings is None  # DeepSpeed's default; the autotuner reads it as {}


def test_values_and_lower_is_better():
    s = parse_settings(
        {
            "metric": "latency",
            "tuner_type": "model_based",
            "max_train_batch_size": 64.0,
            "arg_mappings": {" train_micro_batch_size_per_gpu ": " --bs "},
        }
    )
    assert s.lower_is_better and s.max_train_batch_size == 64 and s.tuner_type == "model_based"
    assert s.arg_mappings == {"train_micro_batch_size_per_gpu": "--bs"}
    assert not parse_settings({"metric": "flops"}).lower_is_better


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"tuner_typ": "random"},
            "unknown key 'autotuning.tuner_typ'; did you mean 'autotuning.tuner_type'?",
        ),
        ({"zzz": 1}, "unknown key 'autotuning.zzz'; valid keys:"),
        ({"fast": "yes"}, "'autotuning.fast': Input should be a valid boolean (got 'yes')"),
        (
            {"tuner_num_trials": 0},
            "'autotuning.tuner_num_trials': Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"start_profile_step": True},
            "'autotuning.start_profile_step': expected an integer (got True)",
        ),
        ({"mp_size": "2"}, "'autotuning.mp_size': expected an integer (got '2')"),
        (
            {"memory_per_device": 2.5},
            "'autotuning.memory_per_device': Input should be a valid integer, got a number with a fractional",
        ),
        (
            {"metric": "speed"},
            "'autotuning.metric': Input should be 'latency', 'throughput', 'flops', 'forward' or 'step'",
        ),
        ({"metric": "forward"}, "'autotuning.metric' 'forward' is not measured by this engine"),
        (
            {"tuner_type": "bayes"},
            "'autotuning.tuner_type': Input should be 'gridsearch', 'random' or 'model_based'",
        ),
        (
            {"arg_mappings": {"train_micro_batch_size_per_gpu": 4}},
            "'autotuning.arg_mappings.train_micro_batch_size_per_gpu': Input should be a valid string (got 4)",
        ),
        (
            {"start_profile_step": 5, "end_profile_step": 2},
            "'autotuning': end_profile_step 2 is before start_profile_step 5",
        ),
        ([], "'autotuning' must be an object"),
    ],
)
def test_bad_sections_name_the_key(section, message):
    with pytest.raises(LaunchError) as err:
        parse_settings(section)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("args", "index", "prefix", "path"),
    [
        (["--deepspeed", "--deepspeed_config", "ds.json", "--lr", "1"], 2, "", "ds.json"),
        (["--deepspeed_config=conf/ds.json"], 0, "--deepspeed_config=", "conf/ds.json"),
        (["--deepscale_config", "old.json"], 1, "", "old.json"),
        (["--model", "gpt2", "--deepspeed", "hf.json"], 3, "", "hf.json"),
        (["--deepspeed=hf.json"], 0, "--deepspeed=", "hf.json"),
    ],
)
def test_config_argument_forms(args, index, prefix, path):
    found = find_config_argument(args)
    assert (found.index, found.prefix, found.path) == (index, prefix, Path(path))
    assert found.replaced(args, "new.json")[index] == prefix + "new.json"


def test_config_argument_missing():
    with pytest.raises(LaunchError, match="--autotuning needs the DeepSpeed config"):
        find_config_argument(["--deepspeed", "--lr", "1"])


def test_load_user_config(tmp_path):
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2}))
    assert load_user_config(good) == {"train_micro_batch_size_per_gpu": 2}
    (tmp_path / "dup.json").write_text('{"a": 1, "a": 2}')
    (tmp_path / "bad.json").write_text('{"a": 1,,}')
    (tmp_path / "list.json").write_text("[1]")
    for name, message in (
        ("dup.json", "duplicate key 'a'"),
        ("bad.json", "invalid JSON at line 1 column 9"),
        ("list.json", "must be a JSON object"),
        ("missing.json", "cannot read the DeepSpeed config"),
    ):
        with pytest.raises(LaunchError, match=message):
            load_user_config(tmp_path / name)


def test_key_set_is_deepspeeds_plus_memory_per_device():
    deepspeed_keys = {
        "enabled",
        "fast",
        "results_dir",
        "exps_dir",
        "overwrite",
        "start_profile_step",
        "end_profile_step",
        "metric_path",
        "tuner_type",
        "tuner_early_stopping",
        "tuner_num_trials",
        "arg_mappings",
        "max_train_batch_size",
        "min_train_batch_size",
        "max_train_micro_batch_size_per_gpu",
        "min_train_micro_batch_size_per_gpu",
        "num_tuning_micro_batch_sizes",
        "mp_size",
        "metric",
        "model_info",
        "model_info_path",
    }
    assert settings_keys() == deepspeed_keys | {"memory_per_device"}
