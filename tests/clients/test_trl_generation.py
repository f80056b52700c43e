"""TRL's ``unwrap_model_for_generation`` on this project's ZeRO-3 engine, 2 CPU ranks via the ``deepspeed`` launcher.

The script (``scripts/trl_generation.py``) prepares a tiny Llama with Accelerate at ZeRO-3, trains 2
steps, generates inside TRL's real context manager (which gathers the parameters and takes the ZeRO-3
hooks off through ``engine.optimizer.parameter_offload``), with a different prompt and number of new
tokens on each rank, and trains 2 more steps. The tokens must equal a plain copy of the weights'
tokens, and the losses after generating must equal those of a run that did not generate.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("trl")

NEW_TOKENS = (4, 7)


@pytest.mark.timeout(420)
def test_unwrap_model_for_generation_at_zero3(launch) -> None:
    generated = launch("deepspeed", "trl_generation.py", "generated", "--generate")
    plain = launch("deepspeed", "trl_generation.py", "plain")
    for rank, (got, want) in enumerate(zip(generated.results, plain.results)):
        assert got["zero_stage"] == 3 and got["partitioned"] > 0
        assert got["full_shapes_match"]
        assert len(got["tokens"]) == got["prompt_len"] + NEW_TOKENS[rank]
        assert got["tokens"] == got["plain_tokens"], f"rank {rank}"
        assert got["losses_before"] == want["losses_before"]
        assert got["losses_after"] == want["losses_after"], f"rank {rank}: generation changed training"
