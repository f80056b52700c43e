"""A torch-free stand-in for a user's training script, for ds-launch's autotuning tests.

ds-launch's own tests must pass without torch (its declared dependencies), so this script plays the
engine's side of Note [autotuning protocol] from the config it is given: a profiling run writes model
info, an experiment writes metrics whose throughput follows a fixed formula of the ZeRO stage and micro
batch, and a normal run (no enabled ``autotuning`` section) records what it was started with. The real
engine end to end is tests/autotuning/.

Test hooks (environment): AT_FAIL / AT_OOM = "<stage>:<micro batch>" make rank 1 crash with a plain error /
an out-of-memory error in that configuration; AT_NO_METRICS makes that configuration end without
measuring; AT_HANG makes every rank record its pid in OUT_DIR, report ready on OUT_DIR/ready.fifo and
wait for a signal; AT_RECORD = path for the normal run's record.
"""

import json
import os
import signal
import sys

args = sys.argv[1:]
with open(args[args.index("--deepspeed_config") + 1]) as fh:
    config = json.load(fh)
section = config.get("autotuning") or {}
rank = int(os.environ["RANK"])
stage = config["zero_optimization"]["stage"]
micro = config["train_micro_batch_size_per_gpu"]
where = f"{stage}:{micro}"
if os.environ.get("AT_HANG") == where:
    out = os.environ["OUT_DIR"]
    with open(os.path.join(out, f"pid.{rank}"), "w") as fh:
        fh.write(str(os.getpid()))
    os.write(os.open(os.path.join(out, "ready.fifo"), os.O_WRONLY), b"x")
    signal.pause()
if rank == 1 and os.environ.get("AT_FAIL") == where:
    raise RuntimeError(f"deliberate failure at {where}")
if rank == 1 and os.environ.get("AT_OOM") == where:
    raise MemoryError(f"out of memory: tried to allocate {micro} GiB")
if rank != 0:
    sys.exit(0)
if not section.get("enabled"):
    with open(os.environ["AT_RECORD"], "w") as fh:
        json.dump({"config": config, "argv": args, "world_size": int(os.environ["WORLD_SIZE"])}, fh)
elif (section.get("model_info") or {}).get("profile"):
    with open(section["model_info_path"], "w") as fh:
        json.dump(
            {
                "num_params": 1_000_000,
                "activation_mem_per_gpu": 1000 * micro,
                "memory_per_device": 10**12,
                "train_micro_batch_size_per_gpu": micro,
            },
            fh,
        )
elif os.environ.get("AT_NO_METRICS") != where:
    throughput = 100.0 * micro / (micro + 2) + stage  # bigger micro batches help, with diminishing returns
    with open(section["metric_path"], "w") as fh:
        json.dump(
            {
                "throughput": throughput,
                "latency": 1e3 * config["train_batch_size"] / throughput,
                "flops": throughput * 1e9,
            },
            fh,
        )
