"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4) and the flow hash.

``populate`` fills a lookup table of a prime size M from weighted backends; the fast path
indexes it with ``flow_hash(5-tuple) % M``. ``flow_hash`` is the Python twin of the C
``flow_hash`` (MurmurHash3 x86/32 over the 40-byte flow key), scalar for the model and
vectorised with numpy for measuring how many flows move when the backend set changes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vnfkit.model import murmur3_words

M32 = 0xFFFFFFFF

FLOW_KEY_WORDS = 10  # struct flow_key is 40 bytes


def is_prime(n: int) -> bool:
    """Trial division: ring sizes are at most a few hundred thousand."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def flow_hash(key: bytes, seed: int) -> int:
    """The C ``flow_hash``: MurmurHash3 of the flow key read as ten little-endian words."""
    return murmur3_words(struct.unpack("<10I", key), seed)


def flow_hash_np(words: np.ndarray, seed: int) -> np.ndarray:
    """``flow_hash`` of many keys at once: ``words`` is an (n, 10) uint32 array."""
    words = np.asarray(words, dtype=np.uint64)  # room for the 32x32-bit products
    return murmur3_words([words[:, i] for i in range(FLOW_KEY_WORDS)], seed).astype(np.uint32)


def _offset_skip(name: str, m: int) -> tuple[int, int]:
    """The backend's permutation: a start and a step, from two independent hashes of its name
    (not Python's hash(), which changes from process to process)."""
    digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
    h1, h2 = struct.unpack("<QQ", digest)
    return h1 % m, h2 % (m - 1) + 1


def populate(backends: Sequence[tuple[str, int]], m: int) -> list[int]:
    """The Maglev lookup table: M entries, each an index into ``backends`` (name, weight), or
    -1 everywhere when no backend has a weight.

    Backends take turns claiming the next free slot of their own permutation (paper, pseudo-
    code 1). Weights follow the paper's section 3.4 as Envoy implements it: a backend claims a
    slot on an iteration only once ``iteration * weight`` has caught up with its running
    target, so claims are proportional to weight. Weight 0 takes no slot (drained). The result
    depends only on the set of (name, weight) pairs, not on their order.
    """
    if not is_prime(m):
        raise ValueError(f"Maglev table size {m} is not prime")
    order = sorted(range(len(backends)), key=lambda i: backends[i][0])
    active = [i for i in order if backends[i][1] > 0]
    table = [-1] * m
    if not active:
        return table
    if len(active) > m:
        raise ValueError(f"{len(active)} backends do not fit a Maglev table of {m} entries")
    perm = {i: _offset_skip(backends[i][0], m) for i in active}
    weight = {i: backends[i][1] for i in active}
    max_w = max(weight.values())
    nxt = dict.fromkeys(active, 0)
    target = dict.fromkeys(active, 0)
    filled, iteration = 0, 0
    while True:
        for i in active:
            if iteration * weight[i] < target[i]:
                continue
            target[i] += max_w
            offset, skip = perm[i]
            j = nxt[i]
            slot = (offset + j * skip) % m
            while table[slot] >= 0:
                j += 1
                slot = (offset + j * skip) % m
            nxt[i] = j + 1
            table[slot] = i
            filled += 1
            if filled == m:
                return table
        iteration += 1


def random_flow_words(n: int, seed: int) -> np.ndarray:
    """``n`` random IPv4 TCP flow keys (as the fast path lays them out) to an unspecified VIP."""
    rng = np.random.default_rng(seed)
    words = np.zeros((n, FLOW_KEY_WORDS), dtype=np.uint32)
    words[:, 0] = rng.integers(0, 1 << 32, n, dtype=np.uint32)  # client address
    words[:, 4] = np.uint32(0x013212C6)  # 198.18.50.1 as it sits in memory (little-endian)
    ports = rng.integers(1024, 65536, n, dtype=np.uint32)
    words[:, 8] = ((ports >> 8) | ((ports & 0xFF) << 8)) | (np.uint32(0x5000) << 16)  # sport, dport 80
    words[:, 9] = np.uint32(6 | 4 << 8)  # TCP, IPv4
    return words


@dataclass
class Movement:
    """What removing one of ``n`` backends did to ``flows`` flows."""

    n: int
    ring_size: int
    flows: int
    moved: float          # share of all flows whose backend changed
    on_removed: float     # share that was on the removed backend (these must move)

    @property
    def ideal(self) -> float:
        """Consistent hashing's ideal: only the removed backend's 1/N."""
        return 1 / self.n

    @property
    def collateral(self) -> float:
        """Flows that moved although their backend stayed (Maglev trades a little of this
        for its even spread)."""
        return self.moved - self.on_removed


def flow_movement(n: int, ring_size: int, flows: int = 100_000, seed: int = 1, hash_seed: int = 0) -> Movement:
    """Build a table for ``n`` equal backends, remove one, and count how many of ``flows``
    random flows (hashed as the fast path hashes them) change backend."""
    names = [f"198.18.60.{i + 1}:0" for i in range(n)]
    before = populate([(name, 1) for name in names], ring_size)
    gone = n // 2
    after_idx = populate([(name, 1) for i, name in enumerate(names) if i != gone], ring_size)
    kept = [name for i, name in enumerate(names) if i != gone]
    before_names = np.array([names[i] for i in before])
    after_names = np.array([kept[i] for i in after_idx])
    slots = flow_hash_np(random_flow_words(flows, seed), hash_seed) % np.uint32(ring_size)
    b, a = before_names[slots], after_names[slots]
    return Movement(n, ring_size, flows, float(np.mean(b != a)), float(np.mean(b == names[gone])))
