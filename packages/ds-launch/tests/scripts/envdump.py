"""Rank script: write what this rank sees (variables, argv, affinity, cwd) to OUT_DIR/rank<R>.json."""

import json
import os
import sys
from pathlib import Path

KEYS = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CROSS_RANK",
    "CROSS_SIZE",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "FROM_HOME",
    "FROM_CWD",
    "SHARED",
    "CUSTOM",
    "NCCL_DEBUG",
    "PYTHONHASHSEED",
]
data = {key: os.environ.get(key) for key in KEYS}
data["argv"] = sys.argv[1:]
data["affinity"] = sorted(os.sched_getaffinity(0))
data["pid"] = os.getpid()
data["ppid"] = os.getppid()
data["cwd"] = os.getcwd()
out = Path(os.environ["OUT_DIR"])
(out / f"rank{data['RANK']}.json").write_text(json.dumps(data))
print(f"hello from rank {data['RANK']}")
print(f"stderr of rank {data['RANK']}", file=sys.stderr)
