"""Kernel UAPI numbers the engine uses.

Debian's 6.1 UAPI headers predate tcx (6.6), so the numbers are written out here once
instead of being read from ``linux/bpf.h``. Values are ABI: they never change.
"""

from enum import IntEnum


class ProgType(IntEnum):
    SOCKET_FILTER = 1
    SCHED_CLS = 3
    XDP = 6


class MapType(IntEnum):
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    CPUMAP = 16
    XSKMAP = 17
    DEVMAP_HASH = 25
    RINGBUF = 27


PERCPU_MAP_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH}
ARRAY_MAP_TYPES = {MapType.ARRAY, MapType.PERCPU_ARRAY}


class AttachType(IntEnum):
    XDP = 37
    TCX_INGRESS = 46
    TCX_EGRESS = 47


class LinkType(IntEnum):
    XDP = 6
    TCX = 11


class XdpAction(IntEnum):
    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


class TcAction(IntEnum):
    OK = 0
    SHOT = 2
    REDIRECT = 7


# XDP attach flags (linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_HW_MODE = 8
# bpf_xdp_query attach_mode
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)

BPF_F_MMAPABLE = 1 << 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
BPF_STATS_RUN_TIME = 0
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
