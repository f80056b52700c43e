"""Which slots on which hosts a job uses: ``--include``/``--exclude`` filters and world info.

A filter string is ``NODE_SPEC[@NODE_SPEC ...]`` with ``NODE_SPEC = NAME[:SLOT[,SLOT ...]]``; a bare
``NAME`` means every slot of that host. The result keeps the hostfile's host order, because global
ranks are handed out host by host in that order on every node.
"""

from __future__ import annotations

import base64
import binascii
import json

from ds_launch.errors import LaunchError

Resources = dict[str, list[int]]


def parse_node_config(node_config: str, *, flag: str = "--include") -> tuple[str, list[int]]:
    """Split one ``NAME[:SLOT[,SLOT ...]]`` into the host and its slots (empty: the whole host)."""
    host, sep, slot_text = node_config.partition(":")
    if not host:
        raise LaunchError(f"{flag}: empty host name in {node_config!r} (expected NAME[:SLOT[,SLOT ...]])")
    if not sep:
        return host, []
    slots: list[int] = []
    for item in slot_text.split(","):
        if not item.isdigit():
            raise LaunchError(
                f"{flag}: slot {item!r} in {node_config!r} is not a non-negative integer "
                "(expected NAME[:SLOT[,SLOT ...]])"
            )
        slots.append(int(item))
    return host, slots


def parse_node_config_list(node_config_list: str, *, flag: str = "--include") -> dict[str, list[int] | None]:
    """Parse ``NODE_SPEC[@NODE_SPEC ...]`` into ``{host: sorted slots}``; ``None`` means the whole host.

    A host named more than once gets the union of its slots, and a bare name wins over slot lists.
    """
    configs: dict[str, list[int] | None] = {}
    for spec in node_config_list.split("@"):
        if not spec.strip():
            raise LaunchError(f"{flag}: empty NODE_SPEC in {node_config_list!r} (expected NAME[:SLOTS]@...)")
        host, slots = parse_node_config(spec.strip(), flag=flag)
        if not slots or configs.get(host, []) is None:
            configs[host] = None
        else:
            configs[host] = sorted(set((configs.get(host) or []) + slots))
    return configs


def _check_known(host_info: Resources, host: str, slots: list[int] | None, flag: str) -> None:
    if host not in host_info:
        known = ", ".join(host_info) or "none"
        raise LaunchError(f"{flag}: host {host!r} is not in the resource pool (hosts: {known})")
    for slot in slots or []:
        if slot not in host_info[host]:
            have = ",".join(str(s) for s in host_info[host]) or "none"
            raise LaunchError(f"{flag}: host {host!r} has no slot {slot} (slots: {have})")


def parse_resource_filter(host_info: Resources, include_str: str = "", exclude_str: str = "") -> Resources:
    """Apply an include or exclude filter to ``{host: [slots]}``; hosts left with no slot are dropped."""
    if include_str and exclude_str:
        raise LaunchError("--include and --exclude are mutually exclusive; pass only one")
    if not include_str and not exclude_str:
        return {host: list(slots) for host, slots in host_info.items()}
    flag = "--include" if include_str else "--exclude"
    configs = parse_node_config_list(include_str or exclude_str, flag=flag)
    for host, slots in configs.items():
        _check_known(host_info, host, slots, flag)
    filtered: Resources = {}
    for host, available in host_info.items():
        if host not in configs:
            kept = [] if include_str else list(available)
        elif include_str:
            kept = list(available) if configs[host] is None else list(configs[host] or [])
        else:
            removed = set(available) if configs[host] is None else set(configs[host] or [])
            kept = [slot for slot in available if slot not in removed]
        if kept:
            filtered[host] = kept
    return filtered


def parse_inclusion_exclusion(resource_pool: dict[str, int], inclusion: str, exclusion: str) -> Resources:
    """Expand ``{host: slot count}`` into slot lists and apply ``--include``/``--exclude``."""
    active = {host: list(range(count)) for host, count in resource_pool.items()}
    return parse_resource_filter(active, include_str=inclusion, exclude_str=exclusion)


def apply_num_nodes_and_gpus(active_resources: Resources, num_nodes: int, num_gpus: int) -> Resources:
    """Keep the first ``num_nodes`` hosts and slots ``[0, num_gpus)`` on each (negative: no limit)."""
    hosts = list(active_resources)
    if num_nodes > 0:
        hosts = hosts[:num_nodes]
    if num_gpus > 0:
        return {host: list(range(num_gpus)) for host in hosts}
    return {host: list(active_resources[host]) for host in hosts}


def encode_world_info(world_info: Resources) -> str:
    """World info as URL-safe base64 JSON: safe to pass on any command line or through a shell."""
    return base64.urlsafe_b64encode(json.dumps(world_info).encode("utf-8")).decode("ascii")


def decode_world_info(encoded: str) -> Resources:
    """Inverse of :func:`encode_world_info`, validating the shape."""
    try:
        data = json.loads(base64.urlsafe_b64decode(encoded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError) as err:
        raise LaunchError(f"--world_info is not base64-encoded JSON: {err}") from None
    if not isinstance(data, dict) or not all(
        isinstance(slots, list) and all(isinstance(s, int) for s in slots) for slots in data.values()
    ):
        raise LaunchError("--world_info must encode {host: [slot, ...]}")
    return {str(host): list(slots) for host, slots in data.items()}


def global_rank_mapping(world_info: Resources) -> dict[str, list[int]]:
    """Global ranks of each host's slots: consecutive, host by host in world-info order."""
    mapping: dict[str, list[int]] = {}
    next_rank = 0
    for host, slots in world_info.items():
        mapping[host] = list(range(next_rank, next_rank + len(slots)))
        next_rank += len(slots)
    return mapping
