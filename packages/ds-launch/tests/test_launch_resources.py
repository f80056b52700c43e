"""--include/--exclude filters, --num_nodes/--num_gpus, and world info."""

from __future__ import annotations

import pytest

from ds_launch.errors import LaunchError
from ds_launch.resources import (
    apply_num_nodes_and_gpus,
    decode_world_info,
    encode_world_info,
    global_rank_mapping,
    parse_inclusion_exclusion,
    parse_node_config,
    parse_node_config_list,
    parse_resource_filter,
)

POOL = {"worker-0": 4, "worker-1": 4, "worker-2": 2}


def test_parse_node_config():
    assert parse_node_config("worker-0") == ("worker-0", [])
    assert parse_node_config("worker-1:0,2") == ("worker-1", [0, 2])
    assert parse_node_config_list("w:2@w:0@v") == {"w": [0, 2], "v": None}
    assert parse_node_config_list("w:1@w") == {"w": None}  # a bare name means the whole host


def test_include_whole_host_and_slots_keeps_hostfile_order():
    active = parse_inclusion_exclusion(POOL, "worker-1:0,2@worker-0", "")
    assert list(active.items()) == [("worker-0", [0, 1, 2, 3]), ("worker-1", [0, 2])]


def test_exclude_slots_and_whole_hosts():
    assert parse_inclusion_exclusion(POOL, "", "worker-1:0@worker-2") == {
        "worker-0": [0, 1, 2, 3],
        "worker-1": [1, 2, 3],
    }


def test_seed_examples():
    pool = {"worker-1": 4, "worker-2": 4, "worker-3": 4}
    active = parse_inclusion_exclusion(pool, "", "worker-2:0@worker-3:0,1")
    assert active == {"worker-1": [0, 1, 2, 3], "worker-2": [1, 2, 3], "worker-3": [2, 3]}
    assert parse_inclusion_exclusion(pool, "worker-2:0,1", "") == {"worker-2": [0, 1]}


def test_no_filter_is_identity():
    assert parse_resource_filter({"a": [0, 1]}) == {"a": [0, 1]}


@pytest.mark.parametrize(
    ("include", "exclude", "message"),
    [
        (
            "nope",
            "",
            "--include: host 'nope' is not in the resource pool (hosts: worker-0, worker-1, worker-2)",
        ),
        ("worker-2:5", "", "--include: host 'worker-2' has no slot 5 (slots: 0,1)"),
        ("", "worker-0:9", "--exclude: host 'worker-0' has no slot 9"),
        ("worker-0:a", "", "slot 'a' in 'worker-0:a' is not a non-negative integer"),
        ("worker-0:", "", "slot '' in 'worker-0:' is not a non-negative integer"),
        ("worker-0@", "", "empty NODE_SPEC"),
        (":1", "", "empty host name"),
        ("worker-0", "worker-1", "mutually exclusive"),
    ],
)
def test_bad_filters(include, exclude, message):
    with pytest.raises(LaunchError) as err:
        parse_inclusion_exclusion(POOL, include, exclude)
    assert message in str(err.value)


def test_num_nodes_and_gpus():
    active = parse_inclusion_exclusion(POOL, "", "")
    assert apply_num_nodes_and_gpus(active, 2, -1) == {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3]}
    assert apply_num_nodes_and_gpus(active, -1, 1) == {"worker-0": [0], "worker-1": [0], "worker-2": [0]}
    assert apply_num_nodes_and_gpus(active, -1, -1) == active


def test_world_info_round_trip_and_rank_mapping():
    world = {"b": [2, 3], "a": [0]}
    encoded = encode_world_info(world)
    assert encoded.isascii() and " " not in encoded
    assert decode_world_info(encoded) == world
    assert global_rank_mapping(world) == {"b": [0, 1], "a": [2]}
    with pytest.raises(LaunchError, match="base64"):
        decode_world_info("%%%")
    with pytest.raises(LaunchError, match="must encode"):
        decode_world_info(encode_world_info(["x"]))  # type: ignore[arg-type]
