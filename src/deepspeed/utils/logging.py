"""`deepspeed.utils.logging`: the logger the engine writes to, which clients tune with ``setLevel``.

Transformers calls ``deepspeed.utils.logger.setLevel(...)`` and Lightning
``deepspeed.utils.logging.logger.setLevel(...)`` to quiet or raise DeepSpeed's output; both reach the
``ds_engine`` logger the engine actually uses.
"""

from ds_engine.log import get_logger, log_dist, print_dist

logger = get_logger()

__all__ = ["log_dist", "logger", "print_dist"]
