"""ds_launch: the ``deepspeed`` launcher (hostfiles, resource filters, runners, per-node launch).

Importing this package imports nothing heavy (no torch, no Typer): the per-node launcher and the rank
shim start from here on every node and rank, so their start-up cost is the launcher's overhead.
"""

from ds_launch._version import __version__

__all__ = ["__version__"]
