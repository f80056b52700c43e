"""Started with ``--module rankpkg``: records its rank, arguments and module spec (proving ``python -m``)."""

import json
import os
import sys
from pathlib import Path

out = Path(os.environ["OUT_DIR"])
data = {
    "RANK": os.environ["RANK"],
    "LOCAL_RANK": os.environ["LOCAL_RANK"],
    "argv": sys.argv[1:],
    "main": __spec__.name,
}
(out / f"rank{data['RANK']}.json").write_text(json.dumps(data))
