"""The SDK benchmark runs end to end in its smallest form and writes what it promises.

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
SCENARIOS = ("kernel_floor", "kernel_miss", "kernel_hit", "native_batch_miss", "native_batch_hit",
             "native_single_miss", "native_single_hit", "native_call", "model_miss", "model_hit")


@pytest.mark.kernel
def test_sdk_benchmark_smoke(tmp_path: Path) -> None:
    # A subprocess runs the real entry point (`python -m perf`) and keeps its CPU pinning,
    # its loaded native module and its kernel objects out of the test process.
    res = subprocess.run([sys.executable, "-m", "perf", "sdk", "--quick", "--smoke", "--runs", "5",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr

    [js] = tmp_path.glob("sdk-*.json")
    doc = json.loads(js.read_text())
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name in SCENARIOS:
        assert len(doc["scenarios"][name]["values"]) == 5, name
    assert js.with_suffix(".png").is_file()
