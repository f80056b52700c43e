"""``deepspeed.launcher.runner``: DeepSpeed's launcher entry point and helpers, as thin aliases."""

from ds_launch.cli import main, parse_args
from ds_launch.elastic import ELASTIC_TRAINING_ID_DEFAULT
from ds_launch.environment import DEEPSPEED_ENVIRONMENT_NAME, EXCLUDE_ENVS, EXPORT_ENVS
from ds_launch.hostfile import DLTS_HOSTFILE, fetch_hostfile, parse_hostfile
from ds_launch.resources import (
    apply_num_nodes_and_gpus,
    encode_world_info,
    parse_inclusion_exclusion,
    parse_node_config,
    parse_node_config_list,
    parse_resource_filter,
)
from ds_launch.runners import RUNNERS as LAUNCHER_CLASSES
from ds_launch.runners.pdsh import PDSH_MAX_FAN_OUT

_parse_hostfile = parse_hostfile  # DeepSpeed's private name, used by its tests and some tools

__all__ = [
    "DEEPSPEED_ENVIRONMENT_NAME",
    "DLTS_HOSTFILE",
    "ELASTIC_TRAINING_ID_DEFAULT",
    "EXCLUDE_ENVS",
    "EXPORT_ENVS",
    "LAUNCHER_CLASSES",
    "PDSH_MAX_FAN_OUT",
    "apply_num_nodes_and_gpus",
    "encode_world_info",
    "fetch_hostfile",
    "main",
    "parse_args",
    "parse_inclusion_exclusion",
    "parse_node_config",
    "parse_node_config_list",
    "parse_resource_filter",
]
