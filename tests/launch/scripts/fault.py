"""Rank script for fault tests, driven by FAULT:

* ``crash``: rank CRASH_RANK prints and exits with code 3 once every other rank is up; the others
  wait forever.
* ``hang``: like ``crash``, but the waiting ranks ignore SIGTERM and each has a child process that
  waits too (the whole tree must be killed).
* ``wait``: every rank waits forever (for signal tests).

Each waiting rank writes its pid (and its child's) to OUT_DIR/pid.<rank>[.child], then one byte to the
FIFO OUT_DIR/ready.fifo. Whoever needs "everyone is up" (the crashing rank, or the test) reads that
FIFO: a blocking read, no sleeping.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

out = Path(os.environ["OUT_DIR"])
rank = int(os.environ["RANK"])
world = int(os.environ["WORLD_SIZE"])
mode = os.environ["FAULT"]
crash_rank = int(os.environ.get("CRASH_RANK", "-1"))
fifo = out / "ready.fifo"

if rank == crash_rank:
    fd = os.open(fifo, os.O_RDWR)  # read-write: never blocks on open, never sees EOF
    got = 0
    while got < world - 1:
        got += len(os.read(fd, world))
    print(f"rank {rank} is failing on purpose", flush=True)
    print("Traceback (simulated): ValueError: boom", file=sys.stderr, flush=True)
    sys.exit(3)

if mode == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()"]
    )
    (out / f"pid.{rank}.child").write_text(str(child.pid))
(out / f"pid.{rank}").write_text(str(os.getpid()))
with open(fifo, "wb", buffering=0) as ready:
    ready.write(b"x")
while True:
    signal.pause()
