"""The starters' rank-variable table: torch-free, and complete for every scheme the launcher names."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from ds_accel.starters import MPI_STARTERS, STARTERS, RankVariables


def test_importing_the_table_does_not_import_torch():
    code = "import sys, ds_accel.starters; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_starter_names_distinct_variables():
    for scheme, spec in STARTERS.items():
        names = [getattr(spec, f.name) for f in fields(RankVariables) if f.name != "starter"]
        present = [n for n in names if n is not None]
        assert len(present) == len(set(present)), scheme
        assert all(n.isupper() for n in present), scheme


def test_mpi_flavours_are_launcher_schemes():
    assert set(MPI_STARTERS) <= set(STARTERS.values())
    assert STARTERS["mpich"] is STARTERS["impi"]  # Hydra sets the same PMI variables for both
