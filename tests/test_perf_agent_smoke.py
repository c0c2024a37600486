"""The agent benchmark runs end to end in its smallest form and writes what it promises.

Only completion and the shape of the output are checked: numbers from a shared VM are not a
test of anything, so there are no timing thresholds here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.kernel
def test_agent_benchmark_smoke(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "perf", "agent", "--smoke", "--runs", "5", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    [js] = tmp_path.glob("agent-*.json")
    doc = json.loads(js.read_text())
    assert set(doc["scenarios"]) == {"apply_cold", "apply_cached", "report_latency", "getcounters_rtt"}
    for name, scenario in doc["scenarios"].items():
        assert len(scenario["values"]) == 5 and scenario["median"] > 0, name
    assert js.with_suffix(".png").is_file()
