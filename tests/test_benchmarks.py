"""The benchmark scripts run end to end on a tiny input and write their section (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_acquire_writes_its_section(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# balda performance benchmarks\n\n## Performance (streets preset)\n\nkept\n")
    out = tmp_path / "acquire.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_acquire.py"),
            "--models",
            "small",
            "--images",
            "3",
            "--prior-images",
            "2",
            "--data",
            str(tmp_path / "none"),
            "--size",
            "32",
            "64",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())["models"]["small"]
    assert set(res["rounds"]) == {"ripu_1", "ripu_2", "cbda_1", "cbda_2"}
    assert res["rounds"]["cbda_1"]["weights_from"] == "predicted"
    assert res["rounds"]["cbda_2"]["weights_from"] == "labelled"
    text = md.read_text()
    assert "kept" in text and "## Acquisition" in text and "| small |" in text
