"""The AF_XDP benchmark runs end to end in its smallest form and writes what it promises.

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
BATCHES = (1, 16, 64, 256)
SCENARIOS = ("xdp_deny", "python_deny", "python_allow",
             *(f"xsk_b{b}_{case}" for b in BATCHES for case in ("deny", "allow")))


@pytest.mark.kernel
def test_xsk_benchmark_smoke(tmp_path: Path) -> None:
    # A subprocess runs the real entry point (`python -m perf`) and keeps its CPU pinning,
    # its worker process and its kernel objects out of the test process.
    res = subprocess.run([sys.executable, "-m", "perf", "xsk", "--quick", "--smoke", "--runs", "5",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr

    [js] = tmp_path.glob("xsk-*.json")
    doc = json.loads(js.read_text())
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name in SCENARIOS:
        assert len(doc["scenarios"][name]["values"]) == 5, name
    for b in BATCHES:
        for key in (f"xsk_b{b}_deny_over_xdp_deny", f"xsk_b{b}_deny_over_python_deny",
                    f"xsk_b{b}_allow_over_python_allow"):
            assert len(doc["derived"][key]["values"]) == 5, key
    assert doc["setup"]["xsk_mode"] == "copy"
    assert js.with_suffix(".png").is_file()
