"""What a VNF's C source declares, read from the BTF of its compiled BPF object.

The same declarations make the native build, so this is also how the native executor and
the Python model learn table types, config fields, counter and port names: one source of
truth, the C, without a second hand-written description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datapath.btf import KIND_ENUM, KIND_STRUCT, Btf
from datapath.compiler import compile_bpf
from datapath.errors import LoadError
from datapath.kernel import MapType
from datapath.libbpf import captured_log, ffi, lib
from datapath.verdict import BUILTIN_COUNTERS

TABLE_WORDS = {MapType.HASH: "hash", MapType.LRU_HASH: "lru_hash", MapType.ARRAY: "array",
               MapType.PERCPU_ARRAY: "percpu_array", MapType.LPM_TRIE: "lpm_trie"}
INTERNAL_PREFIX = "vk_"


@dataclass
class TableInfo:
    name: str
    type: str            # hash | lru_hash | array | percpu_array | lpm_trie | other
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_dtype: np.dtype
    value_dtype: np.dtype


@dataclass
class Introspection:
    object_path: Path
    counters: list[str]                                   # the VNF's own, without CTR_
    counter_ids: dict[str, int]                           # every counter (built-ins too) -> slot
    config_dtype: np.dtype | None
    config_fields: dict[str, tuple[str, int]]            # field -> (numpy kind, size)
    tables: dict[str, TableInfo]                          # the VNF's own tables
    internal: dict[str, TableInfo] = field(default_factory=dict)  # vk_counters, vk_state, ...
    ports: list[str] = field(default_factory=list)


def object_tables(obj_path: Path) -> dict[str, TableInfo]:
    """Every map of a BPF object file with its BTF types, without loading it."""
    opts = ffi.new("struct bpf_object_open_opts *", {"sz": ffi.sizeof("struct bpf_object_open_opts")})
    with captured_log() as messages:
        obj = lib.bpf_object__open_file(str(obj_path).encode(), opts)
    if obj == ffi.NULL:
        raise LoadError(f"libbpf could not open {obj_path}:\n" + "".join(messages))
    try:
        btf_ptr = lib.bpf_object__btf(obj)
        btf = Btf(btf_ptr, owned=False) if btf_ptr != ffi.NULL else None
        out: dict[str, TableInfo] = {}
        m = lib.bpf_object__next_map(obj, ffi.NULL)
        while m != ffi.NULL:
            if not lib.bpf_map__is_internal(m):  # .rodata/.bss are not tables
                name = ffi.string(lib.bpf_map__name(m)).decode()
                mtype, ks, vs = lib.bpf_map__type(m), lib.bpf_map__key_size(m), lib.bpf_map__value_size(m)
                kt, vt = lib.bpf_map__btf_key_type_id(m), lib.bpf_map__btf_value_type_id(m)
                out[name] = TableInfo(
                    name=name, type=TABLE_WORDS.get(mtype, "other"), map_type=mtype, key_size=ks,
                    value_size=vs, max_entries=lib.bpf_map__max_entries(m), flags=lib.bpf_map__map_flags(m),
                    key_dtype=btf.dtype(kt) if btf and kt else np.dtype(f"V{ks}"),
                    value_dtype=btf.dtype(vt) if btf and vt else np.dtype(f"V{vs}"))
            m = lib.bpf_object__next_map(obj, m)
        return out
    finally:
        lib.bpf_object__close(obj)


def introspect(vnf: str | Path) -> Introspection:
    """Compile a VNF's fastpath.c (cached) and read its declarations from BTF.

    ``vnf`` is the VNF folder or the C file. Raises CompileError for C errors.
    """
    path = Path(vnf)
    source = path / "fastpath.c" if path.is_dir() else path
    obj_path = compile_bpf(source)
    btf = Btf.from_file(str(obj_path))
    counter_ids: dict[str, int] = {}
    custom: list[str] = []
    enum_id = btf.find("vnf_counter", KIND_ENUM)
    for name, value in (btf.enum_members(enum_id) if enum_id else {}).items():
        if name.startswith("CTR_"):
            custom.append(name[4:])
            counter_ids[name[4:]] = value
        elif name.startswith("VK_CTR_") and name != "VK_CTR_MAX":
            counter_ids[name[7:].lower()] = value
    assert all(counter_ids.get(n) == i for i, n in enumerate(BUILTIN_COUNTERS)), "vnfkit.h and verdict.py disagree"
    port_id = btf.find("vnf_port", KIND_ENUM)
    ports = sorted(((v, n[5:]) for n, v in (btf.enum_members(port_id) if port_id else {}).items()
                    if n.startswith("PORT_")))
    cfg_id = btf.find("vnf_config", KIND_STRUCT)
    cfg_dtype = btf.dtype(cfg_id) if cfg_id else None
    fields = {}
    if cfg_dtype is not None and cfg_dtype.names:
        for name in cfg_dtype.names:
            sub = cfg_dtype.fields[name][0]
            fields[name] = (sub.kind, sub.itemsize)
    tables = object_tables(obj_path)
    own = {n: t for n, t in tables.items() if not n.startswith(INTERNAL_PREFIX)}
    internal = {n: t for n, t in tables.items() if n.startswith(INTERNAL_PREFIX)}
    return Introspection(object_path=obj_path, counters=custom, counter_ids=counter_ids, config_dtype=cfg_dtype,
                         config_fields=fields, tables=own, internal=internal, ports=[n for _, n in ports])
