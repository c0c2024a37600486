"""BTF types as numpy dtypes, so map keys and values are typed without hand-written structs.

The kernel keeps each map's BTF (``bpf_map_info.btf_id``) and the key/value type ids, so
the same code types a map whether it was just loaded or re-opened from a pin by another
process.
"""

from __future__ import annotations

import functools

import numpy as np

from datapath.libbpf import ffi, lib

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FLOAT, KIND_TYPE_TAG, KIND_ENUM64 = 16, 18, 19
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}
INT_SIGNED = 1


class Btf:
    """BTF type information: from the kernel (by id) or from an object file."""

    def __init__(self, ptr, *, owned: bool, keepalive: object = None) -> None:  # noqa: ANN001 - cffi
        self._btf = ffi.gc(ptr, lib.btf__free) if owned else ptr
        self._keepalive = keepalive  # the bpf_object that owns a borrowed pointer
        self._cache: dict[int, np.dtype] = {}

    @classmethod
    def from_kernel(cls, btf_id: int) -> Btf:
        ptr = lib.btf__load_from_kernel_by_id(btf_id)
        if ptr == ffi.NULL:
            raise OSError(ffi.errno, f"loading BTF id {btf_id} from the kernel failed")
        return cls(ptr, owned=True)

    @classmethod
    def from_file(cls, path: str) -> Btf:
        """The BTF in an ELF object file (what clang -g put there)."""
        ptr = lib.btf__parse(path.encode(), ffi.NULL)
        if ptr == ffi.NULL:
            raise OSError(ffi.errno, f"{path} has no readable BTF")
        return cls(ptr, owned=True)

    def find(self, name: str, kind: int) -> int | None:
        """Type id of the type called ``name`` of ``kind`` (KIND_STRUCT, KIND_ENUM, ...)."""
        tid = lib.btf__find_by_name_kind(self._btf, name.encode(), kind)
        return tid if tid > 0 else None

    def enum_members(self, type_id: int) -> dict[str, int]:
        t = self._type(type_id)
        members = ffi.cast("struct btf_enum *", t + 1)
        return {ffi.string(lib.btf__name_by_offset(self._btf, members[i].name_off)).decode(): members[i].val
                for i in range(t.info & 0xFFFF)}

    def _type(self, type_id: int):  # noqa: ANN202 - cffi pointer
        return lib.btf__type_by_id(self._btf, type_id)

    def name(self, type_id: int) -> str:
        t = self._type(type_id)
        return ffi.string(lib.btf__name_by_offset(self._btf, t.name_off)).decode()

    def _resolve(self, type_id: int) -> int:
        while True:
            t = self._type(type_id)
            if (t.info >> 24) & 0x1F not in _MODIFIERS:
                return type_id
            type_id = t.size  # the `type` member of the union for modifiers

    def dtype(self, type_id: int) -> np.dtype:
        """numpy dtype with the exact size and member offsets of BTF type ``type_id``."""
        if type_id not in self._cache:
            self._cache[type_id] = self._build(type_id)
        return self._cache[type_id]

    def _build(self, type_id: int) -> np.dtype:
        type_id = self._resolve(type_id)
        t = self._type(type_id)
        kind, vlen, kflag = (t.info >> 24) & 0x1F, t.info & 0xFFFF, t.info >> 31
        if kind == KIND_INT:
            enc = ffi.cast("__u32 *", t + 1)[0]
            size, signed = t.size, bool((enc >> 24) & INT_SIGNED)
            if size in (1, 2, 4, 8):
                return np.dtype(f"{'i' if signed else 'u'}{size}")
            return np.dtype(f"V{size}")
        if kind in (KIND_ENUM, KIND_ENUM64):
            return np.dtype(f"{'i' if kflag else 'u'}{t.size}")
        if kind == KIND_PTR:
            return np.dtype("u8")
        if kind == KIND_FLOAT:
            return np.dtype(f"f{t.size}")
        if kind == KIND_ARRAY:
            arr = ffi.cast("struct btf_array *", t + 1)[0]
            elem_id = self._resolve(arr.type)
            et = self._type(elem_id)
            if (et.info >> 24) & 0x1F == KIND_INT and self.name_of(et) == "char":
                # char name[16] reads best as bytes; u8 arrays (addresses) stay numbers, since
                # numpy's S type would drop their trailing zero bytes
                return np.dtype(f"S{arr.nelems}")
            return np.dtype((self.dtype(elem_id), (arr.nelems,)))
        if kind in (KIND_STRUCT, KIND_UNION):
            members = ffi.cast("struct btf_member *", t + 1)
            names, formats, offsets = [], [], []
            for i in range(vlen):
                m = members[i]
                bit_off = m.offset & 0xFFFFFF if kflag else m.offset
                bitfield = (m.offset >> 24) if kflag else 0
                name = ffi.string(lib.btf__name_by_offset(self._btf, m.name_off)).decode() or f"_anon{i}"
                if bitfield or bit_off % 8:
                    continue  # bitfields have no numpy form; their bytes stay in the record
                names.append(name)
                formats.append(self.dtype(m.type))
                offsets.append(bit_off // 8)
            return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": t.size})
        size = lib.btf__resolve_size(self._btf, type_id)
        return np.dtype(f"V{max(size, 0)}")

    def name_of(self, t) -> str:  # noqa: ANN001
        return ffi.string(lib.btf__name_by_offset(self._btf, t.name_off)).decode()


@functools.lru_cache(maxsize=64)
def kernel_btf(btf_id: int) -> Btf:
    return Btf.from_kernel(btf_id)


def map_dtypes(btf_id: int, key_type_id: int, value_type_id: int, key_size: int, value_size: int):
    """(key dtype, value dtype) for a map; raw bytes (``V<n>``) where the map has no BTF."""
    key = np.dtype(f"V{key_size}") if key_size else None
    value = np.dtype(f"V{value_size}") if value_size else None
    if btf_id:
        btf = kernel_btf(btf_id)
        if key_type_id:
            key = btf.dtype(key_type_id)
        if value_type_id:
            value = btf.dtype(value_type_id)
    return key, value
