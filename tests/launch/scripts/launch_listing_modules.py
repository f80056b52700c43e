"""Run the ``deepspeed`` command in this process, then record which torch modules this process loaded.

Usage: python launch_listing_modules.py MODULES_JSON [deepspeed arguments ...]
"""

import json
import sys

from ds_launch.cli import _invoke, run

code = _invoke(sys.argv[2:], run)
loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
with open(sys.argv[1], "w") as fh:
    json.dump(loaded, fh)
sys.exit(code)
