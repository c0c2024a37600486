"""The benchmark suite (``vnfkit bench``) runs end to end in its smallest form and writes what
it promises: every kind of rig built and measured, a no-drop search, per-packet costs of
every VNF job, run-time stats, ratios, the JSON and the PNG.

Only completion and the shape of the output are checked: numbers from a shared VM are not a
test of anything, so there are no timing thresholds here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perf import peers

REPO = Path(__file__).resolve().parent.parent
FUNCTIONS = ("firewall_10", "firewall_1000", "firewall_10000", "nat", "l4lb", "ratelimit", "monitor", "gtp")
ALWAYS = ("floor_drop", "floor_redirect", "floor_pass", "firewall_1000", "nat", "l4lb", "ratelimit", "monitor",
          "gtp", "chain_local_1", "chain_local_2", "chain_remote_2", "nft_fw_1000", "ipt_fw_1000", "linux_forward",
          "nft_snat", "nft_lb_jhash", "nft_limit", "python_fwd")
TESTPMD = ("testpmd_af_packet", "testpmd_af_xdp")


@pytest.mark.kernel
def test_suite_smoke(tmp_path: Path) -> None:
    # Through the `vnfkit bench` entry point a user types, in a subprocess that keeps its
    # CPU pinning, namespaces, XDP attachments and peer processes out of the test process.
    res = subprocess.run([sys.executable, "-m", "vnfkit.cli", "bench", "--quick", "--smoke", "--runs", "5",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "Rates at the receiver" in res.stdout and "× floor" in res.stdout

    [js] = tmp_path.glob("suite-*.json")
    doc = json.loads(js.read_text())
    sc = doc["scenarios"]
    # testpmd is measured where it starts, or named as unavailable with the reason: never silently gone.
    for name in TESTPMD:
        assert (name in sc) != (name in doc["unavailable"]), name
    if peers.testpmd_available()[0] is False:
        assert all(n in doc["unavailable"] for n in TESTPMD)
    assert set(ALWAYS) <= set(sc)
    assert {"floor_drop@1518", "firewall_1000@1518", "nft_fw_1000@1518"} <= set(sc)
    for name, s in sc.items():
        assert len(s["values"]) == 5, name
        assert all(r["received"] > 0 for r in s["runs"]), name
    # Ratios to the floor and to the peers doing the same job, per run.
    assert len(sc["firewall_1000"]["over_floor"]["values"]) == 5
    assert set(sc["firewall_1000"]["vs_peers"]) == {"nft_fw_1000", "ipt_fw_1000"}
    assert set(sc["nat"]["vs_peers"]) == {"nft_snat"}
    assert set(sc["chain_remote_2"]["vs_peers"]) == {"chain_local_2"}
    # The no-drop search ran where the profile asks for it, with its trials on record.
    for name in ("floor_drop", "nat"):
        assert len(sc[name]["no_drop"]["values"]) == 5
        assert all(r["search"]["trials"] for r in sc[name]["runs"])
    # Every job's per-packet cost on both executors, against the floor.
    pp = doc["per_packet"]
    assert {f"testrun_{f}" for f in FUNCTIONS} | {f"native_{f}" for f in FUNCTIONS} | {"testrun_floor"} == set(pp)
    assert len(pp["testrun_nat"]["over_floor"]["values"]) == 5
    # Run-time stats under live traffic for every rig with programs of its own.
    assert doc["setup"]["bpf_stats"]["nat"]["nat"]["run_cnt"] > 0
    assert "tc_police" in doc["unavailable"]  # with the reason
    assert doc["machine"]["kernel"] and doc["versions"]["nft"]
    assert js.with_suffix(".png").is_file()


@pytest.mark.kernel
def test_suite_nic_mode_smoke(topo, tmp_path: Path) -> None:  # noqa: ANN001 - the fixture's Topology
    # No NIC here to give it: a veth pair in the host namespace stands in for two cabled
    # NICs, which exercises the --iface/--peer-iface path (moving the links into the rigs'
    # namespaces one rig at a time), not a driver.
    pair = topo.add_veth(None, None)
    res = subprocess.run([sys.executable, "-m", "vnfkit.cli", "bench", "--quick", "--smoke", "--runs", "5",
                          "--iface", pair.ifname_b, "--peer-iface", pair.ifname_a, "--only", "floor_drop", "nat",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    [js] = tmp_path.glob("suite-*.json")
    doc = json.loads(js.read_text())
    assert doc["parameters"]["links"] == {"iface": pair.ifname_b, "peer_iface": pair.ifname_a}
    assert {"floor_drop", "floor_drop@1518", "nat"} <= set(doc["scenarios"])
    for name in ("floor_drop", "nat"):
        rig = doc["setup"]["rigs"][name]
        assert rig["ingress"] == pair.ifname_b, name  # the DUT received on the "NIC"
        assert all(r["received"] > 0 for r in doc["scenarios"][name]["runs"]), name
