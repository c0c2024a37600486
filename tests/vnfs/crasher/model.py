"""Reference model of crasher: what fastpath.c's kernel build does (the native one crashes)."""

from vnfkit.model import IPPROTO_UDP, ModelContext, Result, Verdict, parse


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    h = parse(pkt)
    if h.error or h.l4_proto != IPPROTO_UDP or not h.l4_off:
        return Result(Verdict.PASS, pkt)
    ctx.count("udp", len(pkt))
    dport = int.from_bytes(pkt[h.l4_off + 2:h.l4_off + 4], "big")
    return Result(Verdict.DROP if dport == ctx.config["crash_port"] else Verdict.PASS, pkt)
