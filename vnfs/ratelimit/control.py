"""The ratelimit VNF's configuration side: a human policy in, table entries and config out.

A policy (a dict, e.g. loaded from YAML) names buckets with a rate, a burst, a unit and the
source prefixes they police, plus the per-flow limit and what to do with exceeding packets::

    exceed: mark                 # drop (default) or mark
    mark_dscp: LE                # 0..63 or a name: LE, CS0..CS7, AF11..AF43, EF
    later_fragments: police      # police (default: by prefix and 3-tuple) or drop
    flow: {rate: 100, burst: 20, unit: packets}     # omit for no per-flow policing
    buckets:
      - name: tenant-a
        rate: 10k                # tokens per second; k, M, G suffixes (powers of 1000)
        burst: 64k               # tokens the bucket holds
        unit: bytes              # packets (default) or bytes (IP header to end of frame)
        action: drop             # default (the policy's exceed), drop or mark
        prefixes: [198.18.0.0/24, 2001:db8:a::/48]

``parse_policy`` checks it all and raises ``RateLimitConfigError`` naming the offending
bucket, prefix or field; ``apply`` writes it through the ``datapath.tables.Table`` interface
(any executor's tables, or a ``KernelInstance``'s) and returns the config values to pass to
``configure``; ``read_stats`` reads the per-bucket counters back by bucket name.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datapath.errors import VnfkitError
from datapath.tables import Table

UNITS = {"packets": 0, "bytes": 1}
ACTIONS = {"default": 0, "drop": 1, "mark": 2}
EXCEED = {"drop": 0, "mark": 1}
FRAGMENTS = {"police": 0, "drop": 1}
U32_MAX = 2**32 - 1
MIN_BYTE_BURST = 1500  # a byte bucket smaller than one full-size packet would never pass it
_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9}
_DSCP_NAMES = {"LE": 1, "EF": 46, **{f"CS{i}": i << 3 for i in range(8)},
               **{f"AF{c}{d}": (c << 3) | (d << 1) for c in range(1, 5) for d in range(1, 4)}}
_POLICY_KEYS = ("exceed", "mark_dscp", "later_fragments", "flow", "buckets")
_BUCKET_KEYS = ("name", "id", "rate", "burst", "unit", "action", "prefixes")
_FLOW_KEYS = ("rate", "burst", "unit")


class RateLimitConfigError(VnfkitError):
    """A ratelimit policy is wrong; the message names the bucket, prefix or field at fault."""


@dataclass(frozen=True)
class Bucket:
    """One prefix bucket, checked: ``id`` is its index in the ``buckets`` table."""

    name: str
    id: int
    rate: int
    burst: int
    unit: int
    action: int
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def record(self) -> dict[str, int]:
        """The ``struct bucket`` value: tokens and last_ns 0, so it starts full on its next packet."""
        return {"tokens": 0, "last_ns": 0, "rate": self.rate, "burst": self.burst, "unit": self.unit,
                "action": self.action}


@dataclass(frozen=True)
class Policy:
    """A checked policy: the buckets and the ``struct vnf_config`` values."""

    buckets: tuple[Bucket, ...]
    config: dict[str, int]

    def bucket(self, name: str) -> Bucket:
        """The bucket called ``name``."""
        for b in self.buckets:
            if b.name == name:
                return b
        raise KeyError(f"no bucket {name!r} (buckets: {', '.join(b.name for b in self.buckets) or 'none'})")


def load_policy(path: str | Path, max_buckets: int = 1024) -> Policy:
    """``parse_policy`` of a YAML file."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RateLimitConfigError(f"{path}: {exc}") from None
    try:
        return parse_policy(spec or {}, max_buckets)
    except RateLimitConfigError as exc:
        raise RateLimitConfigError(f"{path}: {exc}") from None


def parse_policy(spec: Mapping[str, Any], max_buckets: int = 1024) -> Policy:
    """Check a policy dict and turn it into buckets and config values (see the module doc)."""
    if not isinstance(spec, Mapping):
        raise RateLimitConfigError(f"a policy is a mapping of {', '.join(_POLICY_KEYS)}, not {type(spec).__name__}")
    _no_unknown(spec, _POLICY_KEYS, "policy")
    config = {
        "exceed_action": _choice(spec.get("exceed", "drop"), EXCEED, "policy: exceed"),
        "mark_dscp": _dscp(spec.get("mark_dscp", "LE")),
        "drop_later_frags": _choice(spec.get("later_fragments", "police"), FRAGMENTS, "policy: later_fragments"),
        **_flow(spec.get("flow")),
    }
    raw_buckets = spec.get("buckets", [])
    if not isinstance(raw_buckets, list):
        raise RateLimitConfigError("policy: buckets must be a list of buckets")
    buckets: list[Bucket] = []
    by_prefix: dict[Any, str] = {}
    ids: dict[int, str] = {}
    for i, raw in enumerate(raw_buckets):
        b = _bucket(raw, i, max_buckets)
        if any(other.name == b.name for other in buckets):
            raise RateLimitConfigError(f"bucket {b.name!r}: the name is used twice")
        if b.id and b.id in ids:  # 0: no explicit id, one is given below
            raise RateLimitConfigError(f"bucket {b.name!r}: id {b.id} is already bucket {ids[b.id]!r}'s")
        if b.id:
            ids[b.id] = b.name
        for net in b.prefixes:
            if net in by_prefix:
                raise RateLimitConfigError(f"bucket {b.name!r}: prefix {net} is already in bucket {by_prefix[net]!r}")
            by_prefix[net] = b.name
        buckets.append(b)
    # Implicit ids fill the slots explicit ones left free, in order.
    free = (i for i in range(1, max_buckets) if i not in ids)
    buckets = [b if b.id else _with_id(b, next(free, None), max_buckets) for b in buckets]
    return Policy(tuple(buckets), config)


def apply(policy: Policy, tables: Mapping[str, Table], *, reset_stats: bool = True) -> dict[str, int]:
    """Write ``policy`` into the VNF's tables; return the config values for ``configure``.

    Make before break: the new buckets and prefixes are written first, stale prefixes and
    buckets removed after, so no packet meets a prefix without its bucket. Every bucket
    written starts full. Per-flow state is kept (a lowered burst caps it on the next packet).
    """
    for name in ("src4", "src6", "buckets", "bucket_stats"):
        if name not in tables:
            raise RateLimitConfigError(f"no table {name!r}: these are not the ratelimit VNF's tables")
    for family, table in ((4, tables["src4"]), (6, tables["src6"])):
        n = sum(1 for b in policy.buckets for p in b.prefixes if p.version == family)
        if n > table.max_entries:
            raise RateLimitConfigError(f"{n} IPv{family} prefixes, but table {table.name} holds {table.max_entries}")
    for b in policy.buckets:
        if b.id >= tables["buckets"].max_entries:
            raise RateLimitConfigError(f"bucket {b.name!r}: id {b.id} does not fit table buckets "
                                       f"({tables['buckets'].max_entries} entries)")
    for b in policy.buckets:
        tables["buckets"][b.id] = b.record()
        if reset_stats:
            tables["bucket_stats"][b.id] = 0
    wanted = {p: b.id for b in policy.buckets for p in b.prefixes}
    for family, name in ((4, "src4"), (6, "src6")):
        table = tables[name]
        stale = [k for k in table.keys() if _key_network(k) not in wanted]
        new = {str(n): i for n, i in wanted.items() if n.version == family}
        if len(new) + len(stale) > table.max_entries:
            _delete(table, stale)  # no room for both: break before make, briefly unpoliced
            stale = []
        for net, bucket_id in new.items():
            table[net] = bucket_id
        _delete(table, stale)
    live = {b.id for b in policy.buckets}
    used = tables["buckets"].as_array()
    for i in range(len(used)):
        if i not in live and int(used[i]["burst"]):
            tables["buckets"][i] = 0  # burst 0: unconfigured, its prefixes (if any remain) pass
    return dict(policy.config)


def read_stats(policy: Policy, tables: Mapping[str, Table]) -> dict[str, dict[str, int]]:
    """Per-bucket conforming and exceeding packets and bytes, by bucket name."""
    out = {}
    for b in policy.buckets:
        rec = tables["bucket_stats"][b.id]
        out[b.name] = {f: int(rec[f]) for f in rec.dtype.names}
    return out


# ---- checks -------------------------------------------------------------------------------------

def _no_unknown(spec: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in spec:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise RateLimitConfigError(f"{where}: unknown field {key!r} ({hint})")


def _choice(value: Any, choices: dict[str, int], where: str) -> int:
    if value not in choices:
        raise RateLimitConfigError(f"{where} {value!r} is not one of {', '.join(choices)}")
    return choices[value]


def _dscp(value: Any) -> int:
    if isinstance(value, str) and value.upper() in _DSCP_NAMES:
        return _DSCP_NAMES[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 63:
        return value
    raise RateLimitConfigError(f"policy: mark_dscp {value!r} is not 0..63 or one of {', '.join(_DSCP_NAMES)}")


def _count(value: Any, where: str, lowest: int) -> int:
    """An integer from 1000 or "1k"/"2.5M" (powers of 1000), in [lowest, 2^32-1]."""
    n: Any = value
    if isinstance(value, str):
        text = value.strip()
        scale = _SUFFIXES.get(text[-1:], 1)
        try:
            n = float(text[:-1] if scale != 1 else text) * scale
        except ValueError:
            raise RateLimitConfigError(f"{where} {value!r} is not a number (suffixes: k, M, G)") from None
    if isinstance(n, bool) or not isinstance(n, int | float) or n != int(n):
        raise RateLimitConfigError(f"{where} {value!r} is not a whole number")
    n = int(n)
    if not lowest <= n <= U32_MAX:
        raise RateLimitConfigError(f"{where} {value!r} is not in {lowest}..{U32_MAX}")
    return n


def _flow(spec: Any) -> dict[str, int]:
    if spec is None:
        return {"flow_rate": 0, "flow_burst": 0, "flow_unit": 0}  # burst 0: per-flow policing off
    if not isinstance(spec, Mapping):
        raise RateLimitConfigError("policy: flow must be a mapping of rate, burst and unit (or absent)")
    _no_unknown(spec, _FLOW_KEYS, "flow")
    for key in ("rate", "burst"):
        if key not in spec:
            raise RateLimitConfigError(f"flow: needs a {key}")
    unit = _choice(spec.get("unit", "packets"), UNITS, "flow: unit")
    burst = _count(spec["burst"], "flow: burst", MIN_BYTE_BURST if unit else 1)
    return {"flow_rate": _count(spec["rate"], "flow: rate", 0), "flow_burst": burst, "flow_unit": unit}


def _bucket(raw: Any, index: int, max_buckets: int) -> Bucket:
    if not isinstance(raw, Mapping):
        raise RateLimitConfigError(f"bucket #{index + 1}: a bucket is a mapping, not {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise RateLimitConfigError(f"bucket #{index + 1}: needs a name")
    where = f"bucket {name!r}:"
    _no_unknown(raw, _BUCKET_KEYS, where[:-1])
    for key in ("rate", "burst", "prefixes"):
        if key not in raw:
            raise RateLimitConfigError(f"{where} needs {key}")
    unit = _choice(raw.get("unit", "packets"), UNITS, f"{where} unit")
    burst = _count(raw["burst"], f"{where} burst", 1)
    if unit and burst < MIN_BYTE_BURST:
        raise RateLimitConfigError(f"{where} a burst of {burst} bytes is less than one {MIN_BYTE_BURST}-byte "
                                   f"packet, which would never conform")
    bucket_id = raw.get("id", 0)
    if "id" in raw and (isinstance(bucket_id, bool) or not isinstance(bucket_id, int)
                        or not 1 <= bucket_id < max_buckets):
        raise RateLimitConfigError(f"{where} id {bucket_id!r} is not in 1..{max_buckets - 1}")
    prefixes = raw["prefixes"]
    if isinstance(prefixes, str) or not isinstance(prefixes, list) or not prefixes:
        raise RateLimitConfigError(f"{where} prefixes must be a non-empty list")
    nets: dict[Any, None] = {}  # ordered and O(1) to check
    for text in prefixes:
        try:
            net = ipaddress.ip_network(str(text), strict=True)
        except ValueError as exc:
            raise RateLimitConfigError(f"{where} prefix {text!r}: {exc}") from None
        if net in nets:
            raise RateLimitConfigError(f"{where} prefix {net} is listed twice")
        nets[net] = None
    return Bucket(name, bucket_id, _count(raw["rate"], f"{where} rate", 0), burst, unit,
                  _choice(raw.get("action", "default"), ACTIONS, f"{where} action"), tuple(nets))


def _with_id(b: Bucket, bucket_id: int | None, max_buckets: int) -> Bucket:
    if bucket_id is None:
        raise RateLimitConfigError(f"bucket {b.name!r}: no id left (the buckets table has {max_buckets} entries, "
                                   f"id 0 unused)")
    return Bucket(b.name, bucket_id, b.rate, b.burst, b.unit, b.action, b.prefixes)


def _delete(table: Table, keys: list[Any]) -> None:
    for key in keys:
        del table[key]


def _key_network(key: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An LPM key record (prefixlen, addr) as the network it stands for."""
    addr = bytes(key["addr"])
    ip = ipaddress.IPv4Address(addr) if len(addr) == 4 else ipaddress.IPv6Address(addr)
    return ipaddress.ip_network(f"{ip}/{int(key['prefixlen'])}", strict=False)
