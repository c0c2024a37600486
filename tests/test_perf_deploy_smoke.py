"""The deploy benchmark (``python -m perf deploy``) runs end to end in its quick form and writes
what it promises: deploys through the real orchestrator onto real agents on three emulated
hosts and onto stand-in agents, the floor and the ratios, the JSON and the PNG, and leaves no
namespace, pin group or process behind.

Only completion and the shape of the output are checked: numbers from a shared VM are not a
test of anything, so there are no timing thresholds here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import netns as pr_netns

from datapath.pins import project_root
from perf.deploy import STREAM_PROBE

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.kernel
def test_deploy_benchmark_quick(tmp_path: Path) -> None:
    # In a subprocess, as a user runs it: its emulation, agents and stand-ins stay out of the test process.
    res = subprocess.run([sys.executable, "-m", "perf", "deploy", "--quick", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "floor: direct Apply" in res.stdout and "STAND-IN" in res.stdout

    [js] = tmp_path.glob("deploy-*.json")
    doc = json.loads(js.read_text())
    services, registry = doc["scenarios"]["services"], doc["scenarios"]["registry"]
    assert set(services) == {"1", "5"} and set(registry) == {"10", "20"}
    assert set(doc["scenarios"]["counter_streams"]) == {str(n) for n in STREAM_PROBE}  # answered or not: results
    for n, s in services.items():
        for key in ("deploy_cold", "deploy_warm", "undeploy", "direct_cold", "direct_warm", "remove_direct", "plan",
                    "cold_over_direct", "warm_over_direct"):
            assert len(s[key]["values"]) == 1 and s[key]["median"] > 0, (n, key)
        assert s["setup"]["traffic_counted_on_path"] is True, n
    assert services["5"]["setup"]["hosts_used"] == ["h1", "h2", "h3"]  # placement spread it
    for n, r in registry.items():
        assert r["deploy"]["median"] > 0 and r["setup"]["agents"] == int(n), n
        assert r["setup"]["hosts_not_alive_at_end"] == [], n
        assert "deploy_over_fewest" in r
    assert doc["parameters"]["stand_ins"].startswith("STAND-INS")
    assert doc["machine"]["kernel"] and doc["versions"]["vnfkit_commit"]
    assert js.with_suffix(".png").is_file()

    # Everything it made is gone: its namespaces and the agents' pin groups (named by the
    # emulation's prefix), its processes (orchestrators, agents, stand-ins: their command lines
    # name its work folder), the work folder itself.
    for n, s in services.items():
        prefix = s["setup"]["emu_prefix"]
        assert not [ns for ns in pr_netns.listnetns() if ns.startswith(prefix)], n
        assert not list(project_root().glob(f"emu-{prefix}-*")), n
    work = doc["parameters"]["workdir"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert work not in ps and not Path(work).exists()
