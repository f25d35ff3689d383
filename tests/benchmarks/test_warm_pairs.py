"""benchmarks/warm_pairs.py: the committed 5-seed warm-start table regenerates from the records in git."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("balda_bench_warm_pairs", ROOT / "benchmarks" / "warm_pairs.py")
warm = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(warm)


def test_the_committed_table_is_what_the_records_give(tmp_path):
    data = warm.per_seed()
    assert sorted(data[warm.METHOD]) == sorted(data[warm.CONTROL]) == [0, 1, 2, 3, 4]
    out = tmp_path / "w.md"
    assert warm.main(["--markdown", str(out)]) == 0
    assert out.read_text() == (ROOT / "benchmarks" / "results" / "warm_pairs.md").read_text()
    assert "Δ rare_recall -6.8 [-11.9, -1.7] *" in out.read_text()
