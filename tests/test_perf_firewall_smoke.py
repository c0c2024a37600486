"""The firewall benchmark runs end to end in its smallest form and writes what it promises.

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
RULE_COUNTS = (10, 1_000, 10_000)
SCENARIOS = ("kernel_floor",
             *(f"{path}_{case}_{n}" for path in ("kernel", "native") for case in ("first", "last", "spread")
               for n in RULE_COUNTS),
             "kernel_state_10000", "native_state_10000")


@pytest.mark.kernel
def test_firewall_benchmark_smoke(tmp_path: Path) -> None:
    # A subprocess runs the real entry point (`python -m perf`) and keeps its CPU pinning,
    # its loaded native module and its kernel objects out of the test process.
    res = subprocess.run([sys.executable, "-m", "perf", "firewall", "--quick", "--smoke", "--runs", "5",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr

    [js] = tmp_path.glob("firewall-*.json")
    doc = json.loads(js.read_text())
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name in SCENARIOS:
        assert len(doc["scenarios"][name]["values"]) == 5, name
        assert len(doc["scenarios"][name]["over_floor"]["values"]) == 5, name
    assert set(doc["derived"]["rules_10000_over_10"]) == {f"{p}_{c}" for p in ("kernel", "native")
                                                          for c in ("first", "last", "spread")}
    assert js.with_suffix(".png").is_file()
