"""The engine benchmark runs end to end in its smallest form and writes what it promises.

Only completion and the shape of the output are checked: numbers from a shared VM are
not a test of anything, so there are no timing thresholds here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("testrun_xdp_pass", "testrun_xdp_lookup", "rate_floor", "rate_xdp_count", "rate_nft",
             "rate_python_af_packet")


@pytest.mark.kernel
def test_engine_benchmark_smoke(tmp_path: Path) -> None:
    # A subprocess runs the real entry point (`python -m perf`) and keeps its CPU pinning
    # and signal handlers out of the test process.
    res = subprocess.run([sys.executable, "-m", "perf", "engine", "--quick", "--smoke", "--runs", "5",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr

    [js] = tmp_path.glob("engine-*.json")
    doc = json.loads(js.read_text())
    for name in SCENARIOS:
        assert len(doc["scenarios"][name]["values"]) == 5, name
    assert js.with_suffix(".png").is_file()
