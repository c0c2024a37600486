"""The Python NSH codec against RFC 8300 and two independent dissectors (scapy, tshark)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.nsh import NSH
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from chaining.nsh import ETHERTYPE_NSH, VXLAN_GPE_PORT, ContextTlv, NextProto, Nsh, NshError, decode, vxlan_gpe

tlvs = st.lists(st.builds(ContextTlv, st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.binary(max_size=20)),
                max_size=4)
headers = st.one_of(
    st.builds(Nsh, spi=st.integers(0, (1 << 24) - 1), si=st.integers(0, 255), next_proto=st.sampled_from(NextProto),
              ttl=st.integers(0, 63), md_type=st.just(1), context=st.binary(min_size=16, max_size=16),
              oam=st.booleans()),
    st.builds(Nsh, spi=st.integers(0, (1 << 24) - 1), si=st.integers(0, 255), next_proto=st.sampled_from(NextProto),
              ttl=st.integers(0, 63), md_type=st.just(2), tlvs=tlvs.map(tuple)),
)


@settings(max_examples=300, deadline=None)
@given(headers, st.binary(max_size=32))
def test_round_trip(nsh: Nsh, payload: bytes) -> None:
    got, rest = decode(nsh.encode() + payload)
    assert got == nsh and rest == payload


@settings(max_examples=200, deadline=None)
@given(headers)
def test_scapy_reads_what_we_write(nsh: Nsh) -> None:
    theirs = NSH(nsh.encode())
    assert (theirs.spi, theirs.si, theirs.ttl, theirs.mdtype, theirs.nextproto, theirs.length) == \
        (nsh.spi, nsh.si, nsh.ttl, nsh.md_type, nsh.next_proto, nsh.length_words)


def test_we_read_what_scapy_writes() -> None:
    ours, rest = decode(bytes(NSH(spi=0xABCDE, si=254, nextproto=1, ttl=9) / b"inner"))
    assert (ours.spi, ours.si, ours.next_proto, ours.ttl, ours.md_type, rest) == (0xABCDE, 254, 1, 9, 1, b"inner")


@pytest.mark.parametrize("data, reason", [
    (b"\x0f\xc6\x01\x03", "needs at least 8"),
    (bytes.fromhex("4fc60103 00002aff") + bytes(16), "version 1"),
    (bytes.fromhex("0fc60103 00002aff") + bytes(8), "Length says 24 bytes, 16 are there"),
    (bytes.fromhex("0fc30103 00002aff") + bytes(4), "MD type 1 has Length 6"),
    (bytes.fromhex("0fc30203 00002aff 0001 02 08 0000"), "runs past the header"),
    (bytes.fromhex("0fc20503 00002aff"), "MD type 5"),
])
def test_malformed_headers_are_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(NshError, match=reason):
        decode(data)


def test_field_ranges_and_si_decrement() -> None:
    with pytest.raises(NshError, match="SPI"):
        Nsh(spi=1 << 24, si=1)
    with pytest.raises(NshError, match="TTL"):
        Nsh(spi=1, si=1, ttl=64)
    assert Nsh(spi=5, si=3).decremented().si == 2
    with pytest.raises(NshError, match="dropped"):
        Nsh(spi=5, si=0).decremented()


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark is not installed (make setup installs it)")
def test_tshark_decodes_ethernet_and_vxlan_gpe(tmp_path: Path) -> None:
    inner = bytes(Ether(dst="02:00:00:00:00:02") / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(dport=53))
    md1 = Nsh(spi=0x123, si=200, ttl=40, context=bytes(range(16)))
    md2 = Nsh(spi=0x456, si=7, md_type=2, tlvs=(ContextTlv(0x0101, 3, b"abcdef"),))
    frames = [
        Ether(dst="02:00:00:00:00:02", type=ETHERTYPE_NSH) / (md1.encode() + inner),
        Ether(dst="02:00:00:00:00:02") / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=4444, dport=VXLAN_GPE_PORT)
        / (vxlan_gpe(77) + md2.encode() + inner),
    ]
    pcap = tmp_path / "nsh.pcap"
    wrpcap(str(pcap), frames)
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "nsh.spi", "-e", "nsh.si", "-e", "nsh.ttl",
                          "-e", "nsh.mdtype", "-e", "nsh.metadatalen", "-e", "udp.dstport"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    # tshark mixes hex and decimal, and lists the outer value first where a field repeats
    rows = [[int(v.split(",")[0], 0) if v else None for v in line.split("\t")] for line in out]
    assert rows[0][:4] == [0x123, 200, 40, 1]
    assert rows[1] == [0x456, 7, 63, 2, 6, VXLAN_GPE_PORT]
