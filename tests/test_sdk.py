"""The VNF SDK end to end: one C source on three executors, compared packet for packet."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datapath.btf import KIND_ENUM, Btf
from datapath.verdict import Verdict
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import make_executors
from vnfkit.introspect import introspect
from vnfkit.testing import PacketTestError, fuzz, load_packet_tests, run_tests

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
EXERCISE = Path(__file__).parent / "vnfs" / "exercise"


def vnfkit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vnfkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def executors():  # noqa: ANN201
    exs = make_executors(EXERCISE)
    yield exs
    for ex in exs:
        ex.close()


def test_verdicts_are_the_same_enum_in_c_and_python() -> None:
    btf = Btf.from_file(str(introspect(EXERCISE).object_path))
    members = btf.enum_members(btf.find("vk_verdict", KIND_ENUM))
    assert {name.removeprefix("VK_"): value for name, value in members.items()} == {v.name: v.value for v in Verdict}


def test_exercise_packet_tests_agree_on_all_executors(executors) -> None:  # noqa: ANN001
    tests, _ = load_packet_tests(EXERCISE)
    report = run_tests(executors, tests, load_descriptor(EXERCISE))
    assert report.ran == len(tests) >= 8
    assert report.ok, [(f.test, f.reason) for f in report.failures]


def test_ten_thousand_fuzzed_packets_agree(executors) -> None:  # noqa: ANN001
    """Rewrites, pushes, pops, drops, redirects and counts, identical on kernel, native and
    model over 10,000 generated and mutated packets; tables and counters identical after."""
    _, setup = load_packet_tests(EXERCISE)
    report = fuzz(executors, 10_000, seed=7, desc=load_descriptor(EXERCISE), setup=setup)
    assert report.ran == 10_000
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    counts = {name: n for name, (n, _) in executors[0].counters().items()}
    # The fuzzer reached every behaviour, so agreeing means something.
    for name in ("drop", "pass", "tx", "next", "redirect", "malformed", "pushed", "popped", "rewritten"):
        assert counts[name] > 50, (name, counts)


def test_batch_run_matches_single_runs(executors) -> None:  # noqa: ANN001
    from vnfkit.testing import fuzz_packets

    native = next(ex for ex in executors if ex.name == "native")
    packets = list(fuzz_packets(64, seed=11))
    native.reset()
    native.configure(load_descriptor(EXERCISE).param_defaults())
    batch = native.run_batch(packets)
    after_batch = native.counters()
    native.reset()
    native.configure(load_descriptor(EXERCISE).param_defaults())
    singles = [native.run(p) for p in packets]
    assert [(r.verdict, r.data, r.port) for r in batch] == [(r.verdict, r.data, r.port) for r in singles]
    assert native.counters() == after_batch


def test_native_counters_are_a_live_view(executors) -> None:  # noqa: ANN001
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    native = next(ex for ex in executors if ex.name == "native")
    native.reset()
    native.configure(load_descriptor(EXERCISE).param_defaults())
    view = native.counter_view()
    slot = native.intro.counter_ids["dropped"]
    before = int(view[0, slot]["packets"])
    native.run(bytes(Ether() / IP() / UDP(dport=9)))  # the drop port
    assert int(view[0, slot]["packets"]) == before + 1  # the same memory the C wrote, no re-read
    assert view.base is not None  # a view, not a copy


def test_config_is_read_only_to_the_fast_path(tmp_path: Path) -> None:
    from datapath.errors import VerifierError
    from datapath.objects import load

    src = tmp_path / "writes_config.c"
    src.write_text("""#include <vnfkit.h>
struct vnf_config { __u32 limit; };
VK_USE_CONFIG;
static __always_inline int process(struct vk_pkt *p)
{
    struct vnf_config *cfg = (struct vnf_config *)vk_config();
    if (!cfg)
        return VK_ABORTED;
    cfg->limit = 7;
    return VK_PASS;
}
VNF_MAIN(process)
""")
    with pytest.raises(VerifierError, match="write into map forbidden"):
        load(src)


def test_a_test_naming_a_missing_table_is_a_clear_error(executors, tmp_path: Path) -> None:  # noqa: ANN001
    from scapy.layers.l2 import Ether

    from vnfkit.testing import PacketTest

    with pytest.raises(PacketTestError, match=r"test 'x': no table 'nope' \(tables: .*push_vlan"):
        run_tests(executors, [PacketTest("x", Ether(), tables={"nope": {1: 1}})], load_descriptor(EXERCISE))


def test_config_out_of_range_in_a_test_is_named(executors) -> None:  # noqa: ANN001
    from scapy.layers.l2 import Ether

    from vnfkit.testing import PacketTest

    with pytest.raises(PacketTestError, match=r"test 'y': config: .*pop_vid.*4096 is greater than max 4095"):
        run_tests(executors, [PacketTest("y", Ether(), config={"pop_vid": 4096})], load_descriptor(EXERCISE))


def test_new_skeleton_builds_and_passes_its_own_tests(tmp_path: Path) -> None:
    res = vnfkit("new", "demo-nf", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = vnfkit("test", "demo-nf", "--fuzz", "500", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 packet tests on kernel, native, model: all agree" in res.stdout
    assert "500 fuzzed packets" in res.stdout
    again = vnfkit("new", "demo-nf", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_diverging_model_fails_and_shows_the_first_differing_packet(tmp_path: Path) -> None:
    vnf = tmp_path / "exercise"
    shutil.copytree(EXERCISE, vnf)
    model = vnf / "model.py"
    # A model that forgets to decrement the TTL when it reflects.
    model.write_text(model.read_text().replace("pkt[ip + 8] -= 1", "pass"))
    res = vnfkit("test", str(vnf), "--fuzz", "3000", "--pcap", str(tmp_path / "div.pcap"))
    assert res.returncode == 1
    out = res.stdout
    assert "FAIL reflected with TTL-1, swapped MACs and a fixed checksum: the executors disagree" in out
    assert "kernel: TX" in out and "model: TX" in out
    assert "^^" in out  # the hexdump diff marks the differing bytes
    assert "ttl       = 63" in out and "ttl       = 64" in out  # both packets decoded by scapy
    assert (tmp_path / "div.pcap").stat().st_size > 0


def test_build_reports_artefacts_and_verifier_counts() -> None:
    res = vnfkit("build", str(EXERCISE))
    assert res.returncode == 0, res.stderr
    assert "BPF object" in res.stdout and "native .so" in res.stdout
    assert "program vnf_xdp" in res.stdout and "verifier processed" in res.stdout


def test_skeleton_vnf_on_a_real_veth_blocks_a_real_client(tmp_path: Path, pair) -> None:  # noqa: ANN001
    """End to end: the skeleton attached at XDP between two namespaces; what the server
    socket receives is what the VNF let through."""
    import ipaddress
    import socket

    from datapath import netns
    from vnfkit.instance import KernelInstance

    assert vnfkit("new", "blocker", cwd=tmp_path).returncode == 0
    with netns.enter(pair.ns_b):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((pair.addr_b, 5353))
    server.settimeout(0.5)
    with server, KernelInstance(tmp_path / "blocker") as vnf:
        vnf.attach(pair.ns_b, pair.ifname_b)
        netns.udp_send(pair.ns_a, pair.addr_b, 5353, count=5)
        assert [server.recv(100) for _ in range(5)]  # allowed: all five arrive
        vnf.tables["blocklist"][ipaddress.ip_address(pair.addr_a).packed] = 1
        netns.udp_send(pair.ns_a, pair.addr_b, 5353, count=7)
        with pytest.raises(TimeoutError):
            server.recv(100)  # blocked: nothing arrives
        counts = vnf.counters()
        assert counts["blocked"][0] == 7 and counts["allowed"][0] >= 5
        vnf.configure({"enforce": 0})  # monitor mode, live
        netns.udp_send(pair.ns_a, pair.addr_b, 5353, count=3)
        assert [server.recv(100) for _ in range(3)]
        assert vnf.counters()["blocked"][0] == 10


def test_hash_twins_match_murmur3_reference_vectors() -> None:
    """vk_murmur3_words / murmur3_words are MurmurHash3 x86_32 (the published vectors)."""
    import numpy as np

    from vnfkit.model import murmur3_words

    assert murmur3_words([], 0) == 0
    assert murmur3_words([], 1) == 0x514E28B7
    assert murmur3_words([0], 0) == 0x2362F9DE
    assert murmur3_words([0xFFFFFFFF], 0) == 0x76293B50
    words = np.array([[0, 0xFFFFFFFF], [7, 9]], dtype=np.uint64)
    assert murmur3_words([words[:, 0], words[:, 1]], 5).tolist() == [murmur3_words([0, 0xFFFFFFFF], 5),
                                                                      murmur3_words([7, 9], 5)]
