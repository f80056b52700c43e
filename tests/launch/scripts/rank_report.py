"""Rank script: record what this rank sees in OUT_DIR/rank<R>.json; with ALLREDUCE=1 also join the world
through torch.distributed (gloo, env://) and record the result of an all_reduce of (rank + 1)."""

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
    "NCCL_SOCKET_IFNAME",
    "TORCHELASTIC_RUN_ID",
    "PYTHONHASHSEED",
    "NOT_EXPORTED",
    "GLOO_SOCKET_IFNAME",
]
data = {key: os.environ.get(key) for key in KEYS}
data.update(
    argv=sys.argv[1:],
    affinity=sorted(os.sched_getaffinity(0)),
    pid=os.getpid(),
    cwd=os.getcwd(),
    executable=sys.executable,
    main=__spec__.name if __spec__ else None,
    netns=os.readlink("/proc/self/ns/net"),
)

if os.environ.get("ALLREDUCE") == "1":
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    data.update(all_reduce=value.item(), dist_rank=dist.get_rank(), dist_world=dist.get_world_size())
    dist.destroy_process_group()

out = Path(os.environ["OUT_DIR"])
tmp = out / f".rank{data['RANK']}.json"
tmp.write_text(json.dumps(data))
tmp.rename(out / f"rank{data['RANK']}.json")
print(f"hello from rank {data['RANK']}")
print(f"stderr of rank {data['RANK']}", file=sys.stderr)
