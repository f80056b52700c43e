"""Where a config comes from (ds_engine.config.loading): what initialize() accepts as a config."""

from __future__ import annotations

import pytest

from ds_engine.config import DeepSpeedConfigError, choose_config_source


@pytest.mark.faults
@pytest.mark.parametrize("bad", [123, 1.5, ["train_batch_size", 4], b"{}"])
def test_config_of_another_type_is_a_config_error(bad: object) -> None:
    # DeepSpeed answers a config that is neither a dict nor a path (nor base64 JSON) with a ValueError;
    # before, such a value reached pathlib and failed with a bare TypeError naming no config.
    with pytest.raises(DeepSpeedConfigError, match=r"a dict, a JSON file path or base64 JSON, got"):
        choose_config_source(config=bad)


def test_config_sources_pass_through() -> None:
    assert choose_config_source(config={"train_batch_size": 4}) == {"train_batch_size": 4}
    assert choose_config_source(config="ds_config.json") == "ds_config.json"
