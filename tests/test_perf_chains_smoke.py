"""The chains benchmark runs end to end in its smallest form and writes what it promises.

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
HOPS = (1, 2, 4, 8, 16)
SCENARIOS = (*(f"{kind}_{name}" for kind in ("testrun", "single")
               for name in ("floor", "standalone", *(f"path_{n}" for n in (0, *HOPS)))),
             "single_nsh_send", "single_nsh_receive",  # one inter-host NSH hop, each side
             "rate_floor", *(f"rate_path_{n}" for n in HOPS))


@pytest.mark.kernel
def test_chains_benchmark_smoke(tmp_path: Path) -> None:
    # A subprocess runs the real entry point (`python -m perf`) and keeps its CPU pinning,
    # namespaces and XDP attachments out of the test process.
    res = subprocess.run([sys.executable, "-m", "perf", "chains", "--quick", "--smoke", "--runs", "5",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr

    [js] = tmp_path.glob("chains-*.json")
    doc = json.loads(js.read_text())
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name, scenario in doc["scenarios"].items():
        assert len(scenario["values"]) == 5, name
    assert js.with_suffix(".png").is_file()
