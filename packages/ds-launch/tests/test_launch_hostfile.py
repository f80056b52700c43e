"""Hostfile parsing: the accepted forms and every rejected one, each naming its line."""

from __future__ import annotations

import pytest

from ds_launch.errors import LaunchError
from ds_launch.hostfile import fetch_hostfile, parse_hostfile


def test_parses_hosts_in_order_with_comments_and_blank_lines():
    lines = [
        "# cluster",
        "",
        "worker-1 slots=4",
        "  worker-0   slots=2  # trailing comment",
        "10.0.0.7 slots=1 max_slots=8",
    ]
    pool = parse_hostfile(lines)
    assert list(pool.items()) == [("worker-1", 4), ("worker-0", 2), ("10.0.0.7", 1)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["worker-0 slots=4", "worker-1"], "line 2: expected 'HOST slots=N', got 'worker-1'"),
        (["worker-0 slots=four"], "slots must be a positive integer, got 'slots=four'"),
        (["worker-0 slots=0"], "slots must be a positive integer, got 'slots=0'"),
        (["worker-0 slotz=2"], "line 1: unknown key 'slotz'"),
        (["worker-0 slots=2 slots=3"], "'slots=' given twice"),
        (["worker-0 4"], "expected 'HOST slots=N', got 'worker-0 4'"),
        (
            ["worker-0 slots=1", "", "worker-0 slots=2"],
            "line 3: host 'worker-0' is listed twice (first on line 1)",
        ),
        (["bad;rm slots=1"], "bad host name 'bad;rm'"),
        (["a:b slots=1"], "bad host name 'a:b'"),
        (["# only a comment", ""], "lists no hosts"),
    ],
)
def test_rejects_malformed_hostfiles(lines, message):
    with pytest.raises(LaunchError) as err:
        parse_hostfile(lines, source="hostfile 'hf'")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_default_path_is_optional_but_an_explicit_one_is_required(tmp_path):
    missing = tmp_path / "nope"
    assert fetch_hostfile(missing) is None
    with pytest.raises(LaunchError, match="no such file"):
        fetch_hostfile(missing, required=True)
    good = tmp_path / "hf"
    good.write_text("localhost slots=2\n")
    assert fetch_hostfile(good, required=True) == {"localhost": 2}


def test_errors_are_value_errors_like_deepspeeds():
    with pytest.raises(ValueError):
        parse_hostfile(["nonsense line here"])
