"""Accelerate with a dynamo backend at ZeRO-3: it calls ``engine.compile(backend=..., compile_kwargs=...)``.

``Accelerator(dynamo_backend="eager")`` on 2 CPU ranks via the ``deepspeed`` launcher (the
``scripts/trl_generation.py`` training run, without generation): ``engine.is_compiled`` is true and
the losses equal those of the same run without a dynamo backend.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")


@pytest.mark.timeout(420)
def test_dynamo_backend_compiles_the_engine(launch) -> None:
    compiled = launch("deepspeed", "trl_generation.py", "compiled", "--dynamo_backend", "eager")
    plain = launch("deepspeed", "trl_generation.py", "plain")
    for got, want in zip(compiled.results, plain.results):
        assert got["compiled"] and not want["compiled"]
        assert got["zero_stage"] == 3
        assert got["losses_before"] == pytest.approx(want["losses_before"], rel=1e-6)
        assert got["losses_after"] == pytest.approx(want["losses_after"], rel=1e-6)
