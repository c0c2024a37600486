"""Reference model of the ratelimit VNF: the same rules as fastpath.c, in Python.

Every table operation mirrors one in the C (``lookup_ref`` where C calls vk_lookup, so the
LRU of ``flows`` is refreshed the same way; ``fp_update`` where C calls vk_update) and every
number is the same integer: tokens are nano-tokens, refills are elapsed_ns * rate. The C's
compare-and-swap loops only matter when CPUs race; here, as on one CPU, each succeeds at
once, so the model is the exact specification the kernel approximates under contention.
"""

from __future__ import annotations

import struct

import numpy as np

from vnfkit.model import (
    ETH_P_IP,
    ETH_P_IPV6,
    FRAG_LATER,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Hdrs,
    ModelContext,
    Result,
    Verdict,
    csum_replace2,
    parse,
)

NSEC_PER_SEC = 1_000_000_000
UNIT_BYTES = 1
ACT_DROP, ACT_MARK = 1, 2
BPF_ANY = 0


def refilled(tokens: int, elapsed: int, rate: int, cap: int) -> int:
    """The C ``refilled``: ``tokens`` refilled for ``elapsed`` ns at ``rate``, capped at ``cap``."""
    if tokens >= cap:
        return cap
    if not elapsed or not rate:
        return tokens
    return cap if elapsed > (cap - tokens) // rate else tokens + elapsed * rate


def refill(state: np.ndarray, now: int, rate: int, cap: int) -> None:
    """The C ``refill`` on one CPU (every compare-and-swap succeeds): bring the tokens of
    ``state`` (a writable record with ``tokens`` and ``last_ns``) up to ``now``, in place."""
    last = int(state["last_ns"])
    if last == 0:  # never used: starts full
        state["tokens"], state["last_ns"] = cap, now
        return
    elapsed = 0
    if now > last:
        state["last_ns"] = now
        elapsed = now - last
    state["tokens"] = refilled(int(state["tokens"]), elapsed, rate, cap)


def mark(pkt: bytearray, l3_proto: int, ip: int, dscp: int) -> None:
    """Rewrite the DSCP, keeping ECN; IPv4 with an RFC 1624 update of the header checksum."""
    dscp &= 0x3F
    if l3_proto == ETH_P_IP:
        old = struct.unpack_from("!H", pkt, ip)[0]  # TOS shares its checksum word with version/IHL
        pkt[ip + 1] = (dscp << 2) | (pkt[ip + 1] & 3)
        new = struct.unpack_from("!H", pkt, ip)[0]
        check = struct.unpack_from("!H", pkt, ip + 10)[0]
        struct.pack_into("!H", pkt, ip + 10, csum_replace2(check, old, new))
    else:  # Traffic Class straddles bytes 0 and 1: version:4 TC:8 flow label:20
        pkt[ip] = (pkt[ip] & 0xF0) | (dscp >> 2)
        pkt[ip + 1] = (pkt[ip + 1] & 0x3F) | ((dscp & 3) << 6)


def bucket_account(ctx: ModelContext, bucket_id: int, exceeded: bool, nbytes: int) -> None:
    """The C ``bucket_account``: one packet's outcome in ``bucket_stats[bucket_id]``."""
    st = ctx.tables["bucket_stats"].lookup_ref(bucket_id)
    if st is None:
        return
    kind = "exceed" if exceeded else "conform"
    st[f"{kind}_packets"] += 1
    st[f"{kind}_bytes"] += nbytes


def flow_key(pkt: bytearray, h: Hdrs, src: bytes, dst: bytes, family: int) -> bytes:
    """The C ``struct flow_key``: addresses padded to 16 bytes, ports as in the packet (0
    without a TCP/UDP header), protocol, family, 2 bytes of padding."""
    ports = b"\0\0\0\0"
    if h.l4_off and h.l4_proto in (IPPROTO_TCP, IPPROTO_UDP):
        ports = bytes(pkt[h.l4_off:h.l4_off + 4])
    return src.ljust(16, b"\0") + dst.ljust(16, b"\0") + ports + bytes((h.l4_proto, family, 0, 0))


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    """One packet, as fastpath.c's ``process``."""
    cfg = ctx.config
    h = parse(pkt)
    if h.error:
        ctx.count("malformed", len(pkt))
        return Result(Verdict.DROP, pkt)
    ip = h.l3_off
    if h.l3_proto == ETH_P_IP:
        src, dst, family = bytes(pkt[ip + 12:ip + 16]), bytes(pkt[ip + 16:ip + 20]), 4
        ref = ctx.tables["src4"].lookup_ref(struct.pack("<I", 32) + src)
    elif h.l3_proto == ETH_P_IPV6:
        src, dst, family = bytes(pkt[ip + 8:ip + 24]), bytes(pkt[ip + 24:ip + 40]), 6
        ref = ctx.tables["src6"].lookup_ref(struct.pack("<I", 128) + src)
    else:
        ctx.count("not_ip", len(pkt))
        return Result(Verdict.PASS, pkt)
    if h.frag == FRAG_LATER and cfg["drop_later_frags"]:
        ctx.count("frag_dropped", len(pkt))
        return Result(Verdict.DROP, pkt)

    bucket_id, bucket = 0, None
    if ref is not None:
        bucket_id = int(ref[()])
        bucket = ctx.tables["buckets"].lookup_ref(bucket_id)
        if bucket is not None and int(bucket["burst"]) == 0:
            bucket = None
        if bucket is None:
            ctx.count("no_bucket", len(pkt))

    flows, flow, key, new_flow = ctx.tables["flows"], None, b"", False
    if cfg["flow_burst"]:
        key = flow_key(pkt, h, src, dst, family)
        flow = flows.lookup_ref(key)  # refreshes the LRU, as bpf_map_lookup_elem does
        if flow is None:
            flow, new_flow = np.zeros((), dtype=flows.value_dtype), True  # stored after the decision
    if bucket is None and flow is None:
        ctx.count("unmatched", len(pkt))
        return Result(Verdict.PASS, pkt)

    now = ctx.now()
    l3_bytes = len(pkt) - h.l3_off  # IP header to end of frame: tags not charged
    dflt = ACT_MARK if cfg["exceed_action"] else ACT_DROP
    bact, bcost, fcost = dflt, 0, 0
    prefix_ok = flow_ok = True
    if bucket is not None:
        if int(bucket["action"]) in (ACT_DROP, ACT_MARK):
            bact = int(bucket["action"])
        bcost = (l3_bytes if int(bucket["unit"]) == UNIT_BYTES else 1) * NSEC_PER_SEC
        refill(bucket, now, int(bucket["rate"]), int(bucket["burst"]) * NSEC_PER_SEC)
        prefix_ok = int(bucket["tokens"]) >= bcost
    if flow is not None:
        fcost = (l3_bytes if cfg["flow_unit"] == UNIT_BYTES else 1) * NSEC_PER_SEC
        refill(flow, now, int(cfg["flow_rate"]), int(cfg["flow_burst"]) * NSEC_PER_SEC)
        flow_ok = int(flow["tokens"]) >= fcost
    if prefix_ok and flow_ok:  # on one CPU `take` always succeeds after the check
        if bucket is not None:
            bucket["tokens"] = int(bucket["tokens"]) - bcost
        if flow is not None:
            flow["tokens"] = int(flow["tokens"]) - fcost
    drop = False
    if not prefix_ok:
        ctx.count("exceed_prefix", len(pkt))
        drop |= bact == ACT_DROP
    if not flow_ok:
        ctx.count("exceed_flow", len(pkt))
        drop |= dflt == ACT_DROP
    exceeded = not (prefix_ok and flow_ok)
    if new_flow:
        ctx.count("flow_untracked" if flows.fp_update(key, flow, BPF_ANY) else "flow_new", len(pkt))
    if bucket is not None:
        bucket_account(ctx, bucket_id, exceeded, len(pkt))

    if not exceeded:
        ctx.count("conform", len(pkt))
        return Result(Verdict.PASS, pkt)
    if drop:
        ctx.count("exceed_drop", len(pkt))
        return Result(Verdict.DROP, pkt)
    mark(pkt, h.l3_proto, ip, int(cfg["mark_dscp"]))
    ctx.count("exceed_mark", len(pkt))
    return Result(Verdict.PASS, pkt)
