"""`deepspeed.utils`: the engine's logger and ``log_dist``; ``zero_to_fp32`` (consolidation) as a submodule."""

from deepspeed.utils.logging import log_dist, logger, print_dist

__all__ = ["log_dist", "logger", "print_dist"]
