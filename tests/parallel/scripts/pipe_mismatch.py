"""Two stages whose shapes do not fit (stage 1 expects 7 features, stage 0 sends 6): run by the launcher."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deepspeed  # noqa: E402

deepspeed.init_distributed()

import pipe_workers  # noqa: E402

pipe_workers.mismatched()
