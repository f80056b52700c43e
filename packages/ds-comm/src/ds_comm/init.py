"""``init_distributed``: join (or respect) the process group, with DeepSpeed's signature and defaults."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from ds_comm import rank_exit
from ds_comm.env import DEFAULT_PORT, DistEnvironment, discover
from ds_comm.rendezvous_wait import wait_until_listening

logger = logging.getLogger("ds_comm")

#: DeepSpeed's default process-group timeout: 30 minutes, overridable by ``DEEPSPEED_TIMEOUT`` (minutes).
DEFAULT_TIMEOUT = timedelta(minutes=int(os.environ.get("DEEPSPEED_TIMEOUT", "30")))

_discovered: DistEnvironment | None = None
_teardown: list[Callable[[], None]] = []


def at_teardown(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit, just before the process group is destroyed: objects that
    keep their own process groups (side groups) drop them there (Note [exit teardown])."""
    _teardown.append(callback)


def last_discovery() -> DistEnvironment | None:
    """The environment the last :func:`init_distributed` formed its group from (None if it did not)."""
    return _discovered


def init_distributed(
    dist_backend: str | None = None,
    auto_mpi_discovery: bool = True,
    distributed_port: int = DEFAULT_PORT,
    verbose: bool = True,
    timeout: timedelta | None = None,
    init_method: str | None = None,
    dist_init_required: bool | None = None,
    config: Any = None,
    rank: int = -1,
    world_size: int = -1,
) -> None:
    """Initialise torch.distributed the way DeepSpeed does, unless it already is.

    - An existing process group (the user's own ``init_process_group``) is kept as is.
    - ``dist_init_required=False`` skips initialisation entirely.
    - The backend defaults to the accelerator's (nccl on CUDA, gloo on CPU, hccl on HPU/NPU, ...).
    - Rank, world size and rendezvous come from :func:`ds_comm.env.discover`; they are exported as
      the torchrun variables so that user code reading ``RANK``/``LOCAL_RANK`` sees the same values.
    """
    global _discovered
    if dist.is_initialized() or dist_init_required is False:
        if dist.is_initialized():
            rank_exit.install_exit_hook()  # the user's own group has the same threads (Note [failing exit])
        return
    env = discover(
        rank=rank,
        world_size=world_size,
        distributed_port=distributed_port,
        auto_mpi_discovery=auto_mpi_discovery,
    )
    env.export()
    from ds_accel import get_accelerator

    accel = get_accelerator()
    backend = dist_backend or accel.communication_backend_name()
    if accel.name != "cpu" and accel.device_count() > 0:
        accel.set_device(env.local_rank)  # NCCL-style backends bind a rank to its device
    if verbose and env.rank == 0:
        logger.info("initializing torch.distributed with backend %s: %s", backend, env.describe())
    _import_modules_binding_the_world()
    if init_method is None and env.master_addr is not None and env.rank != 0 and env.world_size > 1:
        # Note [rendezvous race] in ds_comm.rendezvous_wait
        wait_until_listening(env.master_addr, env.master_port, (timeout or DEFAULT_TIMEOUT).total_seconds())
    try:
        dist.init_process_group(
            backend=backend,
            init_method=init_method or "env://",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout or DEFAULT_TIMEOUT,
        )
    except dist.DistNetworkError as err:
        if _port_in_use(err):
            raise MasterPortInUseError(
                f"cannot start the rendezvous on {env.master_addr or 'localhost'}:{env.master_port}: the port is "
                "already in use (another job?); pass a free port with --master_port (launcher) or MASTER_PORT"
            ) from err
        raise
    _discovered = env
    # After init_process_group: torch installs its own excepthook there, and ours must wrap it.
    rank_exit.install_exit_hook()
    atexit.register(_destroy_at_exit)


class MasterPortInUseError(dist.DistNetworkError):
    """Rank 0 could not listen on ``MASTER_PORT``: a user-fixable mistake, reported as one line."""

    ds_user_error = True  # Note [user errors] in ds_comm.rank_exit


def _port_in_use(err: BaseException) -> bool:
    text = str(err)
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def _import_modules_binding_the_world() -> None:
    """Import, before the group exists, the torch modules whose function defaults are ``group.WORLD``.

    ``torch.distributed.nn.functional`` (imported by FSDP2 and DTensor paths) evaluates ``group.WORLD``
    when it is first imported: after ``init_process_group`` its functions' defaults keep the world group
    alive past ``destroy_process_group``, with its gloo threads, and interpreter exit can then abort the
    rank (Note [exit teardown]). Imported first, the defaults are None. It costs a few milliseconds."""
    with contextlib.suppress(ImportError):  # a torch built without the module
        import torch.distributed.nn.functional  # noqa: F401


def _destroy_at_exit() -> None:
    """Tear down the group this module created if the script did not.

    Note [exit teardown]: a gloo group left for interpreter shutdown can abort the process
    ("terminate called without an active exception", exit 134) while its worker threads are torn
    down, turning a finished training run into a failed job. DeepSpeed users rarely call
    ``destroy_process_group``, so the group made here is destroyed before the interpreter exits.
    A group object that outlives this (held by a long-lived trainer) has the same effect, so code
    that keeps one registers :func:`at_teardown` to let go of it, and world-group users hold None.
    A rank dying of an uncaught exception keeps its group and never gets here: see Note [failing
    exit] in ds_comm.rank_exit (destroying the group could hang on a collective its peers never
    join, and its closed connections could reach the launcher before this rank's own error).
    """
    if rank_exit.failing:  # Note [failing exit]: that path ends the process itself
        return
    for callback in reversed(_teardown):
        try:
            callback()
        except Exception:  # noqa: BLE001 - exiting anyway
            logger.debug("teardown callback failed", exc_info=True)
    _teardown.clear()
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway; never turn exit into a traceback
            logger.debug("destroy_process_group at exit failed", exc_info=True)
