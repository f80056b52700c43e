"""Monitors without a process group: DeepSpeed's CSV layout, rank 0 alone writes, client events, and the
error a config gets when a monitor's package is missing (it names the ds-engine extra)."""

from __future__ import annotations

import csv
import importlib.util
from types import SimpleNamespace

import pytest

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError
from ds_engine.monitor import MonitorMaster, _require, csvMonitor


def _cfg(tmp_path, **sections) -> object:
    return DeepSpeedConfig({"train_batch_size": 1, **sections}).model


def test_csv_layout_names_and_headers(tmp_path) -> None:
    monitor = csvMonitor(SimpleNamespace(enabled=True, output_path=str(tmp_path), job_name="job"))
    monitor.write_events([("Train/Samples/train_loss", 1.5, 8), ("eval loss", 2.0, 8)])
    monitor.write_events([("Train/Samples/train_loss", 1.25, 16)])
    rows = list(csv.reader((tmp_path / "job" / "Train_Samples_train_loss.csv").open()))
    assert rows == [["step", "train_loss"], ["8", "1.5"], ["16", "1.25"]]
    assert list(csv.reader((tmp_path / "job" / "eval_loss.csv").open())) == [
        ["step", "eval loss"],
        ["8", "2.0"],
    ]


def test_only_rank_zero_writes_and_client_events_go_through(tmp_path) -> None:
    cfg = _cfg(tmp_path, csv_monitor={"enabled": True, "output_path": str(tmp_path / "r1"), "job_name": "j"})
    other = MonitorMaster(cfg, rank=1)
    assert other.enabled and other.monitors == []
    other.write_events([("Client/x", 1.0, 1)])
    assert not (tmp_path / "r1").exists()
    cfg = _cfg(tmp_path, csv_monitor={"enabled": True, "output_path": str(tmp_path / "r0"), "job_name": "j"})
    master = MonitorMaster(cfg, rank=0)
    master.write_events([("Client/x", 1.0, 1)])
    master.close()
    assert (tmp_path / "r0" / "j" / "Client_x.csv").read_text().splitlines() == ["step,x", "1,1.0"]
    assert not MonitorMaster(_cfg(tmp_path), rank=0).enabled


@pytest.mark.faults
def test_a_missing_package_names_the_extra() -> None:
    with pytest.raises(
        DeepSpeedConfigError,
        match=r"'wandb.enabled' needs the ds_no_such_module package: "
        r"pip install 'ds-engine\[wandb\]'",
    ):
        _require("ds_no_such_module", "wandb", "wandb")


@pytest.mark.faults
@pytest.mark.parametrize(
    ("section", "package", "extra"),
    [
        ("wandb", "wandb", "wandb"),
        ("comet", "comet_ml", "comet"),
        ("tensorboard", "tensorboard", "tensorboard"),
    ],
)
def test_enabled_monitor_without_its_package(tmp_path, section, package, extra) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(
            f"{package} is installed here; the error path is covered by test_a_missing_package_names_the_extra"
        )
    cfg = _cfg(tmp_path, **{section: {"enabled": True}})
    with pytest.raises(DeepSpeedConfigError, match=rf"pip install 'ds-engine\[{extra}\]'"):
        MonitorMaster(cfg, rank=0)
