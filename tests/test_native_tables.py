"""The three table implementations agree: BPF maps in the kernel, vk_tables.c through cffi
(``NativeTable``) and the Python model (``ModelTable``).

Randomized differential tests run one seeded operation sequence against every
implementation and demand the same outcome of each operation (success and its value,
``MapError`` with the same message, ``KeyError``) and the same contents every few hundred
operations. The kernel's LRU hash is approximate (per-CPU free lists: it can evict early and
not exactly the oldest), so it is compared exactly only far below capacity; native and model
are compared exactly at capacity, eviction order included.

``build_test_module`` compiles the real vk_tables.c with a few ``struct vk_table`` globals,
the way the native executor builds a VNF; the executor's author may copy it.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cffi import FFI

from datapath.errors import MapError
from datapath.kernel import MapType
from datapath.native_tables import NATIVE_TABLES_CDEF, NativeTable
from datapath.tables import Table
from vnfkit.model_tables import ModelTable

ROOT = Path(__file__).resolve().parents[1]
VK_TABLES_C = ROOT / "datapath" / "native" / "vk_tables.c"
INCLUDE = ROOT / "datapath" / "include"
BPF = Path(__file__).parent / "bpf"

# The types of tests/bpf/maps.c, as BTF gives them to the kernel's maps.
FLOW_KEY = np.dtype([("saddr", "<u4"), ("daddr", "<u4"), ("sport", "<u2"), ("dport", "<u2"), ("proto", "u1"),
                     ("pad", "u1", (3,))])
FLOW_VAL = np.dtype([("packets", "<u8"), ("bytes", "<u8"), ("label", "S8")])
LPM_V4 = np.dtype([("prefixlen", "<u4"), ("addr", "u1", (4,))])

# The tables of tests/bpf/maps.c again, as a VNF's fastpath.c would declare them natively.
TEST_TABLES_C = r"""
struct vk_table flows = { "flows", VK_T_HASH, 16, 24, 1024, 0, 0 };
struct vk_table slots = { "slots", VK_T_ARRAY, 4, 8, 16, 0, 0 };
struct vk_table pcpu = { "pcpu", VK_T_PERCPU_ARRAY, 4, 24, 4, 0, 0 };
struct vk_table recent = { "recent", VK_T_LRU_HASH, 4, 4, 128, 0, 0 };
struct vk_table routes = { "routes", VK_T_LPM_TRIE, 8, 4, 64, 1 /* BPF_F_NO_PREALLOC */, 0 };

/* vk_cpu is thread-local; a setter makes the thread that calls it pick its slot. */
void vk_test_set_cpu(uint32_t cpu) { vk_cpu = cpu; }
uint32_t vk_test_get_cpu(void) { return vk_cpu; }
"""
TEST_TABLES_CDEF = r"""
extern struct vk_table flows, slots, pcpu, recent, routes;
void vk_test_set_cpu(uint32_t cpu);
uint32_t vk_test_get_cpu(void);
"""
GLOBALS = ("flows", "slots", "pcpu", "recent", "routes")


def build_test_module(tmpdir: str | os.PathLike[str], tables_c: str = TEST_TABLES_C,
                      tables_cdef: str = TEST_TABLES_CDEF) -> tuple[Any, Any]:
    """Compile vk_tables.c plus ``tables_c`` into a cffi API-mode extension in ``tmpdir`` and
    import it; returns its ``(ffi, lib)``. Each call builds a module of a new name, since a
    process cannot import two extensions of one name."""
    name = f"_vk_tables_test_{uuid.uuid4().hex[:12]}"
    ffi = FFI()
    ffi.cdef(NATIVE_TABLES_CDEF + tables_cdef)
    ffi.set_source(name, "#include <vnfkit/native_tables.h>\n" + tables_c, sources=[str(VK_TABLES_C)],
                   include_dirs=[str(INCLUDE)], extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra"])
    so = ffi.compile(tmpdir=str(tmpdir))
    spec = importlib.util.spec_from_file_location(name, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return build_test_module(tmp_path_factory.mktemp("vk_tables"))


@pytest.fixture
def set_cpu(native: tuple[Any, Any]) -> Iterator[Callable[[int], None]]:
    """Set this thread's vk_cpu; put back to 0 after the test."""
    lib = native[1]
    yield lib.vk_test_set_cpu
    lib.vk_test_set_cpu(0)


@pytest.fixture
def cglobal(native: tuple[Any, Any]) -> Iterator[Callable[..., NativeTable]]:
    """Initialise one of the C file's global tables and wrap it; freed after the test."""
    ffi, lib = native
    used = []

    def make(name: str, ncpus: int = 1, key_dtype: np.dtype | None = None,
             value_dtype: np.dtype | None = None) -> NativeTable:
        ptr = ffi.addressof(lib, name)
        assert lib.vk_table_init(ptr, ncpus) == 0
        used.append(ptr)
        return NativeTable(ffi, lib, getattr(lib, name), key_dtype, value_dtype)

    yield make
    for ptr in used:
        lib.vk_table_free(ptr)


def new_native(native: tuple[Any, Any], name: str, type_: int, key_size: int, value_size: int, max_entries: int,
               key_dtype: np.dtype | None = None, value_dtype: np.dtype | None = None, ncpus: int = 1,
               flags: int = 0) -> NativeTable:
    """A native table of any shape, its struct allocated from Python and freed with it."""
    ffi, lib = native
    cname = ffi.new("char[]", name.encode())
    t = ffi.new("struct vk_table *", {"name": cname, "type": type_, "key_size": key_size,
                                      "value_size": value_size, "max_entries": max_entries, "flags": flags})
    assert lib.vk_table_init(t, ncpus) == 0
    t = ffi.gc(t, lib.vk_table_free)
    return NativeTable(ffi, lib, t, key_dtype, value_dtype, ncpus, owner=(cname, t))


def pair(native: tuple[Any, Any], name: str, type_: int, key_size: int, value_size: int, max_entries: int,
         key_dtype: np.dtype | None = None, value_dtype: np.dtype | None = None, ncpus: int = 1,
         flags: int = 0) -> dict[str, Table]:
    """The same table natively and in the model (4-byte keys are u32s unless told)."""
    if key_dtype is None and key_size == 4:
        key_dtype = np.dtype("<u4")
    return {"native": new_native(native, name, type_, key_size, value_size, max_entries, key_dtype, value_dtype,
                                 ncpus, flags),
            "model": ModelTable(name, type_, key_size, value_size, max_entries, key_dtype, value_dtype, ncpus, flags)}


def like(m: Table, native_table: NativeTable) -> dict[str, Table]:
    """A kernel map, the native table of the same declaration and a model table like it."""
    model = ModelTable(m.name, m.type, m.key_size, m.value_size, m.max_entries, m.key_dtype, m.value_dtype,
                       m.ncpus, m.flags)
    return {"kernel": m, "native": native_table, "model": model}


# ---- the differential engine ------------------------------------------------------------

Op = tuple  # (verb, key, argument, flags)


def outcome(fn: Callable[[], Any]) -> tuple:
    try:
        result = fn()
    except MapError as exc:
        return ("MapError", str(exc))
    except KeyError:
        return ("KeyError",)
    return ("ok", result)


def bump(ref: np.ndarray) -> None:
    """What a fast path does most with a looked-up value: count, in place."""
    if ref.dtype.names:
        ref[ref.dtype.names[0]] += 1
    else:
        ref[...] += 1


def apply(op: Op, t: Table, set_cpu: Callable[[int], None] | None = None) -> tuple:
    verb, key, arg, flags = op
    if verb == "update":
        return outcome(lambda: t.update(key, arg, flags))
    if verb == "delete":
        return outcome(lambda: t.delete(key))
    if verb == "lookup":
        return outcome(lambda: (lambda v: None if v is None else v.tobytes())(t.lookup(key, per_cpu=True)))
    if verb == "contains":
        return outcome(lambda: key in t)
    # The fast path's verbs (native and model only).
    if verb == "ref_bump":
        ref = t.lookup_ref(key)
        if ref is not None:
            bump(ref)
        return ("ok", None if ref is None else ref.tobytes())
    if verb == "fp_update":
        return outcome(lambda: t.fp_update(key, arg, flags))
    if verb == "fp_delete":
        return outcome(lambda: t.fp_delete(key))
    if verb == "cpu":
        if isinstance(t, ModelTable):
            t.cpu = arg
        else:
            set_cpu(arg)
        return ("ok", None)
    raise AssertionError(verb)


def contents(t: Table, ordered: bool) -> list[tuple[bytes, bytes]]:
    items = [(k, t._raw_lookup(k)) for k in t.raw_keys()]
    return items if ordered else sorted(items)


def check_contents(tables: dict[str, Table], ordered: bool, where: str) -> None:
    names = list(tables)
    want = contents(tables[names[0]], ordered)
    for name in names[1:]:
        got = contents(tables[name], ordered)
        if got != want:
            only_ref = [kv for kv in want if kv not in got][:5]
            only_this = [kv for kv in got if kv not in want][:5]
            pytest.fail(f"{where}: {name} differs from {names[0]} ({len(got)} vs {len(want)} entries); "
                        f"only in {names[0]}: {only_ref}; only in {name}: {only_this}")


def run_ops(tables: dict[str, Table], ops: list[Op], *, every: int = 250, ordered: bool = False,
            set_cpu: Callable[[int], None] | None = None) -> dict[str, int]:
    """Apply ops to every table, comparing each outcome and, every ``every`` ops and at
    the end, the contents. Returns how often each outcome kind happened (to check that a
    sequence really exercised what it was meant to)."""
    names = list(tables)
    seen: dict[str, int] = {}
    if set_cpu is not None:
        set_cpu(0)  # the model's tables start as CPU 0; vk_cpu may be left from an earlier run
    for i, op in enumerate(ops):
        results = {name: apply(op, tables[name], set_cpu) for name in names}
        want = results[names[0]]
        for name in names[1:]:
            assert results[name] == want, f"op {i} {op[:2]}..: {name} gave {results[name]}, {names[0]} gave {want}"
        kind = want[0] if want[0] != "ok" or not isinstance(want[1], int) or want[1] >= 0 else f"errno{want[1]}"
        if want[0] == "MapError":
            kind = want[1].rsplit(": ", 1)[-1]
        seen[kind] = seen.get(kind, 0) + 1
        if (i + 1) % every == 0:
            check_contents(tables, ordered, f"after op {i}")
    check_contents(tables, ordered, "at the end")
    return seen


def pick_flags(rng: random.Random) -> int:
    # Mostly the three real flags; now and then BPF_NOEXIST|BPF_EXIST or BPF_F_LOCK (-EINVAL).
    return rng.choices([0, 1, 2, 3, 4], weights=[30, 30, 30, 1, 1])[0]


def keyed_ops(rng: random.Random, n: int, keys: list[Any], value: Callable[[], Any], *, fill: int = 0,
              fastpath: bool = False, ncpus: int = 1, weights: tuple[int, ...] = (55, 20, 20, 5)) -> list[Op]:
    """Random update/delete/lookup/contains ops over ``keys``; ``fill`` ANY-updates of
    distinct keys first (to reach capacity fast); ``fastpath`` mixes in the fast path's
    verbs and CPU switches (native vs model only)."""
    ops: list[Op] = [("update", k, value(), 0) for k in rng.sample(keys, fill)]
    verbs = ["update", "delete", "lookup", "contains"]
    w = list(weights)
    if fastpath:
        verbs += ["ref_bump", "fp_update", "fp_delete", "cpu"]
        w += [20, 10, 5, 2]
    for _ in range(n):
        verb = rng.choices(verbs, w)[0]
        k = rng.choice(keys)
        if verb == "cpu":
            ops.append(("cpu", None, rng.randrange(ncpus + 1), 0))  # ncpus itself: no such slot
        elif verb in ("update", "fp_update"):
            ops.append((verb, k, value(), pick_flags(rng)))
        else:
            ops.append((verb, k, None, 0))
    return ops


def lpm_keys(rng: random.Random, n: int, data_size: int = 4) -> list[bytes]:
    """LPM keys that overlap a lot: a few base addresses, varied past random bit positions,
    prefix lengths 0..max (and a few too long, which are -EINVAL)."""
    bits = data_size * 8
    bases = [int.from_bytes(rng.randbytes(data_size), "big") for _ in range(3)] + [0]
    keys = []
    for _ in range(n):
        base = rng.choice(bases)
        cut = rng.randint(0, bits)
        addr = base ^ (rng.getrandbits(bits) & ((1 << (bits - cut)) - 1))
        plen = rng.randint(0, bits) if rng.random() < 0.97 else bits + rng.randint(1, 8)
        keys.append(plen.to_bytes(4, "little") + addr.to_bytes(data_size, "big"))
    return keys


def u32(i: int) -> bytes:
    return i.to_bytes(4, "little")


# ---- kernel vs native vs model ------------------------------------------------------------

@pytest.fixture
def kobj() -> Iterator[Any]:
    from datapath.objects import load

    obj = load(BPF / "maps.c")
    yield obj
    obj.close()


@pytest.mark.kernel
def test_hash_three_ways_up_to_full(kobj: Any, cglobal: Callable[..., NativeTable]) -> None:
    m = kobj.map("flows")
    assert m.key_dtype == FLOW_KEY and m.value_dtype == FLOW_VAL
    tables = like(m, cglobal("flows", key_dtype=FLOW_KEY, value_dtype=FLOW_VAL))
    rng = random.Random(1)
    keys = [rng.randbytes(16) for _ in range(1400)]
    # Few deletes: about 83% of the 1400 keys would be present, more than fit.
    ops = keyed_ops(rng, 4000, keys, lambda: rng.randbytes(24), fill=1020, weights=(60, 8, 20, 5))
    seen = run_ops(tables, ops, every=500)
    assert seen["Argument list too long"] > 50  # E2BIG: the table was full many times
    assert seen["File exists"] > 50 and seen["KeyError"] > 50 and seen["No such file or directory"] > 50


@pytest.mark.kernel
def test_array_three_ways(kobj: Any, cglobal: Callable[..., NativeTable]) -> None:
    m = kobj.map("slots")
    tables = like(m, cglobal("slots", value_dtype=m.value_dtype))
    rng = random.Random(2)
    ops = keyed_ops(rng, 3000, [u32(i) for i in range(20)], lambda: rng.randbytes(8))
    seen = run_ops(tables, ops, every=300, ordered=True)
    assert seen["Argument list too long"] > 20 and seen["Invalid argument"] > 20 and seen["File exists"] > 20


@pytest.mark.kernel
def test_percpu_array_three_ways(kobj: Any, cglobal: Callable[..., NativeTable]) -> None:
    m = kobj.map("pcpu")
    tables = like(m, cglobal("pcpu", ncpus=m.ncpus, value_dtype=FLOW_VAL))
    rng = random.Random(3)

    def value() -> Any:  # one value for every CPU, or a row per CPU
        if rng.random() < 0.5:
            return rng.randbytes(24)
        return np.frombuffer(rng.randbytes(24 * m.ncpus), dtype=FLOW_VAL)

    ops = keyed_ops(rng, 2000, [u32(i) for i in range(6)], value)
    run_ops(tables, ops, every=200, ordered=True)
    summed = [t.as_array() for t in tables.values()]
    assert all(s.tobytes() == summed[0].tobytes() for s in summed)


@pytest.mark.kernel
def test_lpm_trie_three_ways_in_the_kernels_order(kobj: Any, cglobal: Callable[..., NativeTable]) -> None:
    m = kobj.map("routes")
    assert m.key_dtype == LPM_V4
    tables = like(m, cglobal("routes", key_dtype=LPM_V4, value_dtype=m.value_dtype))
    rng = random.Random(4)
    keys = lpm_keys(rng, 400)
    ops = keyed_ops(rng, 3000, keys, lambda: rng.randbytes(4), fill=40, weights=(45, 20, 30, 5))
    # Compared in iteration order: native and model walk the trie in the kernel's postorder.
    seen = run_ops(tables, ops, every=200, ordered=True)
    assert seen["No space left on device"] > 20 and seen["Invalid argument"] > 20


@pytest.mark.kernel
def test_lru_hash_three_ways_below_capacity(kobj: Any, cglobal: Callable[..., NativeTable]) -> None:
    m = kobj.map("recent")
    tables = like(m, cglobal("recent", value_dtype=m.value_dtype))
    rng = random.Random(5)
    # Far below capacity on one CPU: the kernel's per-CPU free lists never run dry, so it
    # evicts nothing and must agree exactly. (Off one CPU, free nodes stranded in other CPUs'
    # local lists can make it evict early.)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        ops = keyed_ops(rng, 2000, [u32(i) for i in range(32)], lambda: rng.randbytes(4))
        run_ops(tables, ops, every=200)
    finally:
        os.sched_setaffinity(0, affinity)
    # At capacity only what the kernel promises is checked: never more than max_entries,
    # the newest write survives, and every entry holds the value last written to its key.
    kernel = tables["kernel"]
    written = dict(contents(kernel, ordered=False))
    for i in range(2000):
        k = u32(rng.randrange(400))
        v = rng.randbytes(4)
        if kernel._raw_update(k, v, 0) == 0:
            written[k] = v
        assert kernel._raw_lookup(k) == v
        if i % 250 == 0:
            items = contents(kernel, ordered=False)
            assert 0 < len(items) <= m.max_entries
            assert all(written[k] == v for k, v in items)


@pytest.mark.kernel
def test_lpm_edge_cases_in_the_kernel_too(kobj: Any, native: tuple[Any, Any]) -> None:
    m = kobj.map("routes")
    tables = pair(native, "routes", MapType.LPM_TRIE, 8, 4, 64, LPM_V4, m.value_dtype, flags=1)
    check_lpm_edge_cases({"kernel": m, **tables})


# ---- native vs model, fast path included ------------------------------------------------

def test_hash_native_vs_model_with_fast_path(native: tuple[Any, Any], set_cpu: Callable[[int], None]) -> None:
    for seed, max_entries in ((10, 1), (11, 7), (12, 64)):
        rng = random.Random(seed)
        tables = pair(native, "h", MapType.HASH, 16, 24, max_entries, FLOW_KEY, FLOW_VAL)
        keys = [rng.randbytes(16) for _ in range(max_entries + max_entries // 2 + 2)]
        ops = keyed_ops(rng, 1500, keys, lambda r=rng: r.randbytes(24), fill=max_entries, fastpath=True,
                        weights=(55, 10, 20, 5))
        seen = run_ops(tables, ops, every=100, set_cpu=set_cpu)
        assert seen["Argument list too long"] > 10 and seen["errno-7"] > 5, seen  # E2BIG by both verbs


def test_lru_native_vs_model_exact_at_capacity(native: tuple[Any, Any], set_cpu: Callable[[int], None]) -> None:
    # Exact eviction order: at capacity every insert evicts, so equal contents after every
    # 50 ops means both evicted the same entries, with lookups (ref_bump) and updates
    # refreshing recency and control-plane lookups not.
    for seed, max_entries in ((20, 1), (21, 16), (22, 128)):
        rng = random.Random(seed)
        tables = pair(native, "recent", MapType.LRU_HASH, 4, 4, max_entries, value_dtype=np.dtype("<u4"))
        keys = [u32(i) for i in range(max_entries * 2 + 2)]
        ops = keyed_ops(rng, 2500, keys, lambda r=rng: r.randbytes(4), fill=max_entries, fastpath=True)
        run_ops(tables, ops, every=50, set_cpu=set_cpu)


def test_lpm_native_vs_model_wide_keys(native: tuple[Any, Any], set_cpu: Callable[[int], None]) -> None:
    # IPv6-sized data (and an odd 3-byte one) with fast-path lookups; iteration order too.
    for seed, data_size, max_entries in ((30, 16, 40), (31, 3, 24), (32, 16, 1)):
        rng = random.Random(seed)
        tables = pair(native, "r", MapType.LPM_TRIE, 4 + data_size, 8, max_entries, value_dtype=np.dtype("<u8"))
        keys = lpm_keys(rng, 300, data_size)
        ops = keyed_ops(rng, 2000, keys, lambda r=rng: r.randbytes(8), fill=min(20, max_entries), fastpath=True,
                        weights=(45, 20, 30, 5))
        seen = run_ops(tables, ops, every=100, ordered=True, set_cpu=set_cpu)
        assert seen["No space left on device"] > 10


def test_arrays_native_vs_model_with_cpus(native: tuple[Any, Any], set_cpu: Callable[[int], None]) -> None:
    rng = random.Random(40)
    for type_, ncpus in ((MapType.ARRAY, 1), (MapType.PERCPU_ARRAY, 3)):
        # value_size 12: the 8-byte stride has padding, which per-CPU values carry along.
        vdt = np.dtype([("n", "<u4"), ("rest", "V8")])
        tables = pair(native, "a", type_, 4, 12, 10, value_dtype=vdt, ncpus=ncpus)

        def value(ncpus: int = ncpus, type_: int = type_, vdt: np.dtype = vdt) -> Any:
            if type_ == MapType.PERCPU_ARRAY and rng.random() < 0.5:
                return np.frombuffer(rng.randbytes(12 * ncpus), dtype=vdt)
            return rng.randbytes(12)

        ops = keyed_ops(rng, 2000, [u32(i) for i in range(13)], value, fastpath=True, ncpus=ncpus)
        run_ops(tables, ops, every=100, ordered=True, set_cpu=set_cpu)
        views = [t.as_array() for t in tables.values()]
        assert views[0].tobytes() == views[1].tobytes()


# ---- unit tests -------------------------------------------------------------------------

def lpm(plen: int, addr: str) -> bytes:
    return plen.to_bytes(4, "little") + bytes(int(x) for x in addr.split("."))


def check_lpm_edge_cases(tables: dict[str, Table]) -> None:
    for name, t in tables.items():
        def hop(addr: str, plen: int = 32, t: Table = t) -> int | None:
            v = t.lookup(lpm(plen, addr))
            return None if v is None else int(v)

        assert hop("1.2.3.4") is None, name
        t.update(lpm(0, "0.0.0.0"), 1)                      # default route
        t.update(lpm(32, "10.1.2.3"), 4)                    # host route
        t.update("10.0.0.0/8", 2)
        t.update(lpm(16, "10.1.99.99"), 3)                  # host bits past /16 are kept, not matched
        assert (hop("1.2.3.4"), hop("10.9.9.9"), hop("10.1.7.7"), hop("10.1.2.3"), hop("10.1.2.4")) == \
            (1, 2, 3, 4, 3), name
        assert hop("10.1.2.3", plen=16) == 3 and hop("10.1.2.3", plen=12) == 2 and hop("10.1.2.3", 0) == 1, name
        assert hop("10.1.2.3", plen=33) is None, name        # longer than the key: no match
        with pytest.raises(MapError, match="Invalid argument"):
            t.update(lpm(33, "10.0.0.0"), 9)
        with pytest.raises(MapError, match="File exists"):
            t.update(lpm(16, "10.1.0.0"), 9, 1)              # same prefix, other host bits
        t.update(lpm(16, "10.1.0.0"), 5, 2)                  # BPF_EXIST replaces it...
        assert [k for k in t.raw_keys()] == [lpm(32, "10.1.2.3"), lpm(16, "10.1.0.0"), lpm(8, "10.0.0.0"),
                                             lpm(0, "0.0.0.0")], name  # ...key bytes too; postorder
        t.delete("10.0.0.0/8")                              # a covering prefix goes, what it covers stays
        assert (hop("10.9.9.9"), hop("10.1.7.7"), hop("10.1.2.3")) == (1, 5, 4), name
        with pytest.raises(KeyError):
            t.delete("10.0.0.0/8")
        with pytest.raises(KeyError):
            t.delete("10.1.2.0/24")                         # covered by an entry but not one
        t.delete(lpm(0, "9.9.9.9"))                         # /0: any address names it
        assert hop("1.2.3.4") is None and hop("10.1.2.3") == 4, name
        with pytest.raises(MapError, match="Invalid argument"):
            t.delete(lpm(40, "10.0.0.0"))
        t.clear()
        assert len(t) == 0, name


def test_lpm_edge_cases(native: tuple[Any, Any]) -> None:
    check_lpm_edge_cases(pair(native, "routes", MapType.LPM_TRIE, 8, 4, 64, LPM_V4, np.dtype("<u4"), flags=1))


def test_lpm_is_bounded_by_entries_not_nodes(native: tuple[Any, Any]) -> None:
    # Intermediate nodes do not count: max_entries entries fit however they fork.
    for t in pair(native, "r", MapType.LPM_TRIE, 8, 4, 8, value_dtype=np.dtype("<u4")).values():
        for i in range(8):
            t.update(lpm(32, f"{1 << i}.0.0.{i}"), i, 1)
        with pytest.raises(MapError, match="No space left"):
            t.update(lpm(32, "200.0.0.1"), 1)
        with pytest.raises(MapError, match="No such file"):  # flags before capacity
            t.update(lpm(32, "200.0.0.1"), 1, 2)
        t.update(lpm(32, "1.0.0.0"), 7)                     # replacing needs no room
        t.delete(lpm(32, "1.0.0.0"))
        t.update(lpm(24, "200.0.0.0"), 1)


def test_array_bounds(native: tuple[Any, Any]) -> None:
    for name, t in pair(native, "a", MapType.ARRAY, 4, 8, 4, value_dtype=np.dtype("<u8")).items():
        assert t.lookup(3) == 0 and t.lookup(4) is None and 4 not in t, name
        with pytest.raises(MapError, match="Argument list too long"):
            t.update(4, 1)
        with pytest.raises(MapError, match="Argument list too long"):
            t.update(99, 1, 1)                              # bounds before BPF_NOEXIST
        with pytest.raises(MapError, match="File exists"):
            t.update(3, 1, 1)
        with pytest.raises(MapError, match="Invalid argument"):
            t.delete(0)
        assert list(t.raw_keys()) == [u32(i) for i in range(4)], name
        assert t._raw_next_key(u32(99)) == u32(0) and t._raw_next_key(u32(3)) is None, name
        assert t.lookup_ref(4) is None and t.fp_update(4, 1) == -7, name


def test_live_array_view(native: tuple[Any, Any]) -> None:
    vdt = np.dtype([("packets", "<u8"), ("bytes", "<u8"), ("tag", "<u4")])  # 20 bytes: stride 24
    for name, t in pair(native, "a", MapType.ARRAY, 4, 20, 5, value_dtype=vdt).items():
        view = t.as_array()
        assert view.shape == (5,) and view.strides == (24,), name
        view[2]["packets"] = 7                               # a write through the view...
        assert t[2]["packets"] == 7, name                    # ...is in the table
        t[3] = {"packets": 1, "bytes": 2, "tag": 3}           # and a write to the table...
        assert view[3]["tag"] == 3, name                     # ...is in the view
        ref = t.lookup_ref(4)
        bump(ref)
        assert view[4]["packets"] == 1, name


def test_per_cpu_slots_follow_vk_cpu(native: tuple[Any, Any], set_cpu: Callable[[int], None]) -> None:
    ffi, lib = native
    tables = pair(native, "p", MapType.PERCPU_ARRAY, 4, 8, 4, value_dtype=np.dtype("<u8"), ncpus=3)
    for cpu in range(3):
        set_cpu(cpu)
        tables["model"].cpu = cpu
        for t in tables.values():
            assert t.fp_update(1, 10 + cpu) == 0
            bump(t.lookup_ref(2))
            bump(t.lookup_ref(2))
    for name, t in tables.items():
        assert list(t.lookup(1, per_cpu=True)) == [10, 11, 12], name
        assert t[1] == 33 and t[2] == 6, name
        rows = t.per_cpu_array()
        assert rows.shape == (3, 4) and list(rows[:, 2]) == [2, 2, 2], name
        rows[1, 3] = 5                                       # live view
        assert list(t.lookup(3, per_cpu=True)) == [0, 5, 0] and t.as_array()[3] == 5, name
    set_cpu(3)                                               # a CPU the table has no slot for
    tables["model"].cpu = 3
    for t in tables.values():
        assert t.lookup_ref(1) is None and t.fp_update(1, 1) == -22
    # vk_cpu is per thread: another thread still has CPU 0.
    seen = []
    thread = threading.Thread(target=lambda: seen.append(lib.vk_test_get_cpu()))
    thread.start()
    thread.join()
    assert seen == [0] and lib.vk_test_get_cpu() == 3
    # lib.vk_cpu (declared in NATIVE_TABLES_CDEF) is the calling thread's too.
    lib.vk_cpu = 2
    assert lib.vk_test_get_cpu() == 2 and tables["native"].lookup_ref(1) == 12
    thread = threading.Thread(target=lambda: seen.append((lib.vk_cpu, tables["native"].lookup_ref(1)[()])))
    thread.start()
    thread.join()
    assert seen[1] == (0, 10)


def test_value_pointers_stay_put(native: tuple[Any, Any]) -> None:
    ffi, lib = native
    rng = random.Random(50)
    for type_, key_size in ((MapType.HASH, 4), (MapType.LRU_HASH, 4), (MapType.LPM_TRIE, 8)):
        t = new_native(native, "t", type_, key_size, 16, 64, value_dtype=np.dtype([("a", "<u8"), ("b", "<u8")]))
        keep = lpm(32, "9.9.9.9") if type_ == MapType.LPM_TRIE else u32(12345)
        t.update(keep, {"a": 1, "b": 2})
        ptr = lib.vk_table_lookup(t.ptr, keep)
        ref = t.lookup_ref(keep)
        live = {keep}
        for _ in range(3000):                                # churn around it, never evicting it
            if type_ == MapType.LPM_TRIE:  # host bits cleared, so one entry is one key
                plen = rng.randint(0, 32)
                addr = rng.getrandbits(32) >> (32 - plen) << (32 - plen) if plen else 0
                k = plen.to_bytes(4, "little") + addr.to_bytes(4, "big")
            else:
                k = u32(rng.randrange(200))
            if k == keep:
                continue
            if k in live and rng.random() < 0.5:
                t.delete(k)
                live.discard(k)
            elif len(live) < 60 or k in live:
                t.update(k, {"a": 0, "b": 0})
                live.add(k)
            if type_ == MapType.LRU_HASH:
                lib.vk_table_lookup(t.ptr, keep)             # keep it the most recent
        assert lib.vk_table_lookup(t.ptr, keep) == ptr, type_
        bump(ref)
        t.update(keep, {"a": 40, "b": 50}, 2)                # control-plane updates write in place
        assert t[keep]["a"] == 40 and ref["b"] == 50, type_
        assert int(ffi.cast("uintptr_t", ptr)) % 8 == 0      # 64-bit atomics on values are valid


def test_lru_eviction_order(native: tuple[Any, Any]) -> None:
    for name, t in pair(native, "l", MapType.LRU_HASH, 4, 4, 4, value_dtype=np.dtype("<u4")).items():
        for i in range(4):
            t[i] = i
        t.lookup_ref(0)                                      # the fast path's lookup refreshes 0
        t.lookup(1)                                          # the control plane's does not
        t[2] = 20                                            # an update refreshes 2
        with pytest.raises(MapError, match="File exists"):
            t.update(3, 9, 1)                                # a failed update refreshes nothing
        t[4] = 4                                             # evicts 1, the least recent
        t[5] = 5                                             # then 3
        assert sorted(int(k) for k in t.keys()) == [0, 2, 4, 5], name
        with pytest.raises(MapError, match="No such file"):
            t.update(6, 6, 2)                                # BPF_EXIST of an absent key evicts nothing
        assert len(t) == 4, name


def test_full_hash_checks_flags_first(native: tuple[Any, Any]) -> None:
    for name, t in pair(native, "h", MapType.HASH, 4, 4, 2, value_dtype=np.dtype("<u4")).items():
        t[1], t[2] = 1, 2
        with pytest.raises(MapError, match="Argument list too long"):
            t[3] = 3
        with pytest.raises(MapError, match="No such file"):
            t.update(3, 3, 2)
        with pytest.raises(MapError, match="File exists"):
            t.update(1, 3, 1)
        t[1] = 10                                            # replacing needs no room
        del t[2]
        t.update(3, 3, 1)
        assert sorted((int(k), int(v)) for k, v in t.items()) == [(1, 10), (3, 3)], name


def test_init_refuses_what_the_kernel_refuses(native: tuple[Any, Any]) -> None:
    ffi, lib = native

    def init(type_: int, key_size: int, value_size: int, max_entries: int, ncpus: int = 1) -> int:
        t = ffi.new("struct vk_table *", {"type": type_, "key_size": key_size, "value_size": value_size,
                                          "max_entries": max_entries})
        ret = lib.vk_table_init(t, ncpus)
        if ret == 0:
            assert lib.vk_table_init(t, ncpus) == -22        # twice: refused, nothing leaks
            lib.vk_table_free(t)
            assert t.impl == ffi.NULL
        return ret

    bad = [(MapType.ARRAY, 8, 4, 4), (MapType.HASH, 0, 4, 4), (MapType.HASH, 4, 0, 4), (MapType.HASH, 4, 4, 0),
           (MapType.LPM_TRIE, 4, 4, 4), (MapType.LPM_TRIE, 4 + 257, 4, 4), (MapType.HASH, 513, 4, 4),
           (MapType.PERCPU_HASH, 4, 4, 4)]
    for args in bad:
        assert init(*args) == -22, args
        with pytest.raises(MapError):
            ModelTable("bad", *args)
    assert init(MapType.PERCPU_ARRAY, 4, 4, 4, ncpus=0) == -22 and init(MapType.PERCPU_ARRAY, 4, 4, 4, 65) == -22
    for good in [(MapType.LPM_TRIE, 5, 1, 1), (MapType.LPM_TRIE, 260, 1, 1), (MapType.HASH, 512, 1, 1)]:
        assert init(*good) == 0, good
    t = ffi.new("struct vk_table *", {"type": MapType.HASH, "key_size": 4, "value_size": 4, "max_entries": 1})
    assert lib.vk_table_lookup(t, u32(0)) == ffi.NULL and lib.vk_table_update(t, u32(0), u32(0), 0) == -22
    with pytest.raises(MapError, match="not initialised"):
        NativeTable(ffi, lib, t)


def test_native_table_checks_its_wrapping(native: tuple[Any, Any], cglobal: Callable[..., NativeTable]) -> None:
    ffi, lib = native
    pcpu = cglobal("pcpu", ncpus=2)
    assert (pcpu.name, pcpu.type, pcpu.ncpus, pcpu.value_size) == ("pcpu", MapType.PERCPU_ARRAY, 2, 24)
    with pytest.raises(MapError, match="initialised for 2 CPUs, not 4"):
        NativeTable(ffi, lib, lib.pcpu, ncpus=4)
    with pytest.raises(MapError, match="value dtype"):
        NativeTable(ffi, lib, lib.pcpu, value_dtype=np.dtype("<u8"))
    with pytest.raises(MapError, match="not a per-CPU array"):
        cglobal("slots").per_cpu_array()
    with pytest.raises(MapError, match="not an array"):
        cglobal("flows").as_array()


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_vk_tables_compiles_without_warnings(cc: str, tmp_path: Path) -> None:
    if not shutil.which(cc):
        pytest.skip(f"{cc} is not installed")
    run = subprocess.run([cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", "-c",
                          str(VK_TABLES_C), "-o", str(tmp_path / "vk_tables.o")], capture_output=True, text=True)
    assert run.returncode == 0 and not run.stderr, run.stderr
