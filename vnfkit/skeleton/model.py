"""Reference model of {{name}}: what fastpath.c does, in Python, packet for packet."""

from vnfkit.model import ETH_P_IP, ModelContext, Result, Verdict, parse


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    h = parse(pkt)
    if h.error or h.l3_proto != ETH_P_IP:
        return Result(Verdict.PASS, pkt)
    src = bytes(pkt[h.l3_off + 12:h.l3_off + 16])
    if src in ctx.tables["blocklist"]:
        ctx.count("blocked", len(pkt))
        return Result(Verdict.DROP if ctx.config["enforce"] else Verdict.PASS, pkt)
    ctx.count("allowed", len(pkt))
    return Result(Verdict.PASS, pkt)
