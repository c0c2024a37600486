"""The no-drop rate (RFC 2544 section 26.1, with a loss threshold): a binary search on the
offered rate, each trial a paced run of the live-frames generator counted at the receiver
(where the kernel refuses live frames, ``traffic.SocketFrames`` paces its sendmmsg batches by
the same schedule and keeps the same record; what follows is about live frames).

Pacing happens inside the generator (datapath/progs/xdp_gen.c): every repetition of the
live-frames test-run reads the clock and sends only when the next frame is due, returning
XDP_DROP (nothing leaves) otherwise, so the generator spins in the kernel between frames.
How precise that is:

* the offered rate is measured, not assumed: the generator records how many frames it sent
  and the clock at the first and the last, and a trial reports that rate;
* frames leave in bursts: live frames are flushed to the device once per batch of
  ``batch_size`` repetitions (64: about 2 µs of spinning here), so all frames that fell due
  within one batch leave together; at 1 Mpps that is about two frames;
* the generator and the path under test share one CPU (as every rate here does): while the
  receiver's softirq work runs, the generator does not, and the frames that fell due meanwhile
  leave back to back when it resumes. A generator more than 64 intervals late restarts its
  schedule and counts it (``late``), so a stall cannot turn into a line-rate burst.

So the rate is right on average to well under 1%, and the burstiness is that of a generator
sharing a core with its receiver; a trial passes when its loss (sent, not counted at the
receiver) is at most ``loss`` of what was sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from datapath.maps import Map
from perf import traffic

CALIBRATION_REPS = 1 << 21


@dataclass
class Trial:
    """One paced run: the rate asked for, the rate the generator achieved, what arrived."""

    requested_pps: float
    offered_pps: float
    sent: int
    received: int
    loss: float       # (sent - received) / sent
    late: int         # schedule restarts (the generator fell more than 64 intervals behind)
    wall_s: float


def spin_rate(gen: traffic.FrameSender, state: Map, rx: Callable[[], int], cpu: int) -> float:
    """Repetitions per second of the generator while nothing is due (one frame, then spinning):
    how many repetitions a paced run of a given length needs."""
    paced = replace(gen, interval_ns=10**10, limit=1)
    state[0] = {}
    start = time.perf_counter()
    traffic.run_once(paced, CALIBRATION_REPS, rx, cpu)
    # A live-frames call idles ~25 ms at its end (page-pool teardown): not spinning.
    return CALIBRATION_REPS / max(time.perf_counter() - start - 0.025, 1e-3)


def trial(gen: traffic.FrameSender, state: Map, rx: Callable[[], int], cpu: int, rate_pps: float,
          seconds: float, spins_per_s: float) -> Trial:
    """Offer ``rate_pps`` for about ``seconds``; count what arrives."""
    frames = max(1, int(rate_pps * seconds))
    paced = replace(gen, interval_ns=max(1, round(1e9 / rate_pps)), limit=frames)
    state[0] = {}
    # Repetitions: one per frame plus the spins between them (generously: a short run just
    # sends fewer frames, and the offered rate is measured either way).
    reps = frames + int(spins_per_s * seconds * 1.2)
    received, wall = traffic.run_once(paced, reps, rx, cpu)
    st = traffic.sent_record(paced, state)
    sent = int(st["sent"])
    span_ns = int(st["last_ns"]) - int(st["first_ns"])
    offered = (sent - 1) / span_ns * 1e9 if sent > 1 and span_ns > 0 else 0.0
    loss = (sent - received) / sent if sent else 1.0
    return Trial(rate_pps, offered, sent, received, max(0.0, loss), int(st["late"]), wall)


def search(run: Callable[[float], Trial], max_pps: float, loss: float, resolution: float,
           max_trials: int) -> dict[str, Any]:
    """Binary search for the highest offered rate whose loss is at most ``loss``, between 0 and
    ``max_pps``, until the bracket is narrower than ``resolution`` x max_pps or ``max_trials``
    trials ran. The result is the offered rate (measured) of the best passing trial."""
    trials: list[Trial] = []
    lo, hi = 0.0, max_pps
    rate = max_pps
    best: Trial | None = None
    while len(trials) < max_trials:
        t = run(rate)
        trials.append(t)
        if t.loss <= loss:
            best = t if best is None or t.offered_pps > best.offered_pps else best
            lo = rate
            if rate >= max_pps:
                break  # no loss at the top of the range
        else:
            hi = rate
        if hi - lo <= resolution * max_pps:
            break
        rate = (lo + hi) / 2
    return {"no_drop_mpps": (best.offered_pps if best else 0.0) / 1e6,
            "bracket_mpps": [lo / 1e6, hi / 1e6], "loss_threshold": loss,
            "trials": [asdict(t) for t in trials]}
