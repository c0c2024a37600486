"""Typed map round-trips in the real kernel: hash, array, per-CPU array, LPM trie, LRU hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from datapath.errors import MapError
from datapath.libbpf import num_possible_cpus
from datapath.objects import load

pytestmark = pytest.mark.kernel
BPF = Path(__file__).parent / "bpf"


@pytest.fixture(scope="module")
def obj():  # noqa: ANN201
    o = load(BPF / "maps.c")
    yield o
    o.close()


def test_hash_struct_keys_and_values(obj) -> None:  # noqa: ANN001
    flows = obj.map("flows")
    assert flows.key_dtype.names == ("saddr", "daddr", "sport", "dport", "proto", "pad")
    key = {"saddr": 1, "daddr": 2, "sport": 1000, "dport": 80, "proto": 6}
    flows[key] = {"packets": 3, "bytes": 180, "label": b"web"}
    got = flows[key]
    assert (got["packets"], got["bytes"], got["label"]) == (3, 180, b"web")
    assert key in flows and len(flows) == 1
    keys = list(flows.keys())
    assert keys[0]["dport"] == 80
    del flows[key]
    assert flows.lookup(key) is None
    with pytest.raises(KeyError):
        del flows[key]


def test_hash_batch_operations(obj) -> None:  # noqa: ANN001
    flows = obj.map("flows")
    keys = np.zeros(600, dtype=flows.key_dtype)
    keys["saddr"] = np.arange(600)
    values = np.zeros(600, dtype=flows.value_dtype)
    values["packets"] = np.arange(600) * 2
    flows.update_batch(keys, values)
    got_keys, got_values = flows.lookup_batch(chunk=128)  # several syscalls' worth
    assert len(got_keys) == 600
    order = np.argsort(got_keys["saddr"])
    assert (got_values["packets"][order] == np.arange(600) * 2).all()
    flows.delete_batch(keys[:500])
    assert len(flows) == 100
    flows.clear()
    assert len(flows) == 0


def test_array_and_mmapable_array_as_numpy(obj) -> None:  # noqa: ANN001
    slots = obj.map("slots")
    slots[3] = 42
    arr = slots.as_array()
    assert arr.shape == (16,) and arr[3] == 42
    shared = obj.map("shared")
    view = shared.as_array()  # BPF_F_MMAPABLE: a live view
    view[5] = 7
    assert shared[5] == 7  # written through memory, read back by syscall
    shared[6] = 9
    assert view[6] == 9
    with pytest.raises(MapError, match="not an array"):
        obj.map("flows").as_array()


def test_per_cpu_values_are_summed(obj) -> None:  # noqa: ANN001
    pcpu = obj.map("pcpu")
    n = num_possible_cpus()
    rows = np.zeros(n, dtype=pcpu.value_dtype)
    rows["packets"] = np.arange(1, n + 1)
    rows["bytes"] = 100
    pcpu[1] = rows
    total = pcpu[1]
    assert total["packets"] == n * (n + 1) // 2 and total["bytes"] == 100 * n
    per_cpu = pcpu.lookup(1, per_cpu=True)
    assert list(per_cpu["packets"]) == list(range(1, n + 1))
    assert pcpu.as_array()["packets"][1] == n * (n + 1) // 2


def test_lpm_trie_longest_prefix_wins_in_the_kernel(obj) -> None:  # noqa: ANN001
    routes, slots = obj.map("routes"), obj.map("slots")
    routes["198.18.0.0/15"] = 1
    routes["198.18.7.0/24"] = 2
    assert routes["198.18.7.0/24"] == 2
    assert len(routes) == 2
    prog = obj.program()
    for dst, hop in (("198.18.7.9", 2), ("198.19.1.1", 1), ("203.0.113.1", 0xFFFF)):
        prog.test_run(Ether() / IP(dst=dst) / UDP())
        assert slots[0] == hop, dst
    del routes["198.18.7.0/24"]
    prog.test_run(Ether() / IP(dst="198.18.7.9") / UDP())
    assert slots[0] == 1


def test_lru_hash_evicts_instead_of_failing(obj) -> None:  # noqa: ANN001
    recent = obj.map("recent")
    for i in range(1000):
        recent[i] = i
    size = len(recent)
    assert 0 < size <= recent.max_entries
    assert recent[999] == 999  # the newest entry survives eviction


def test_wrong_key_size_is_refused_and_names_the_map(obj) -> None:  # noqa: ANN001
    with pytest.raises(MapError, match=r"table 'slots': key is 2 bytes, the table's key is 4 bytes"):
        obj.map("slots").lookup(b"\x00\x01")
    with pytest.raises(MapError, match="slots"):
        obj.map("slots").update(1, "not a number")
    with pytest.raises(MapError, match="update of key 99"):
        obj.map("slots")[99] = 1  # past max_entries: the kernel's E2BIG, named
