"""Pinning: a second process re-opens programs, maps and links by name and finds them
working; removing the group leaves nothing of the project's behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datapath import netns
from datapath.attach import attach_xdp, xdp_query
from datapath.builtin import COUNT_SLOTS, builtin
from datapath.errors import EnvironmentProblem, PinError
from datapath.libbpf import num_possible_cpus
from datapath.objects import load
from datapath.pins import PinGroup, ensure_bpffs, list_attachments

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
UDP_SLOT = COUNT_SLOTS.index("udp")


def run_python(code: str) -> dict:
    """Run code in a fresh interpreter (a different process) and return its JSON output."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_pinned_attachment_outlives_its_process(pair, pins) -> None:  # noqa: ANN001
    # Process 1 (this one) loads, attaches, pins, and lets go of every fd.
    obj = load(builtin("xdp_count"))
    att = attach_xdp(obj.program(), pair.ifname_b, ns=pair.ns_b)
    pins.pin_object(obj)
    pins.pin_link(att, "count@server")
    att.close()
    obj.close()
    assert xdp_query(pair.ifname_b, pair.ns_b) is not None  # still attached: the pin holds it

    netns.udp_send(pair.ns_a, pair.addr_b, 9999, count=25)

    # Process 2 re-opens by name: map typed from BTF, program runnable, link readable.
    out = run_python(f"""
        import json
        from datapath.pins import PinGroup
        g = PinGroup({pins.name!r})
        m = g.map("counters")
        link = g.link("count@server")
        prog = g.program("xdp_count")
        r = prog.test_run(bytes(64))
        m[6] = {{"packets": 1000, "bytes": 1}}
        print(json.dumps({{"udp": int(m[{UDP_SLOT}]["packets"]), "fields": list(m.value_dtype.names),
                          "hook": link.hook, "prog": link.prog_name, "verdict": r.verdict}}))
    """)
    assert out == {"udp": 25, "fields": ["packets", "bytes"], "hook": "xdp", "prog": "xdp_count",
                   "verdict": "PASS"}
    # The other process wrote one value for every CPU; summed here it is that many times.
    assert pins.map("counters")[6]["packets"] == 1000 * num_possible_cpus()

    listed = [a for a in list_attachments() if a["group"] == pins.name]
    assert listed and listed[0]["program"] == "xdp_count" and listed[0]["live"]

    pins.remove()
    assert not pins.exists()
    assert xdp_query(pair.ifname_b, pair.ns_b) is None


def test_pin_name_clash_and_missing_pin_are_named(pins) -> None:  # noqa: ANN001
    with load(builtin("xdp_pass")) as obj:
        pins.pin_program(obj.program())
        with pytest.raises(PinError, match="xdp_pass"):
            pins.pin_program(obj.program())
    with pytest.raises(PinError, match="nothing pinned at .*nope"):
        pins.map("nope")
    with pytest.raises(PinError, match="not usable as a pin name"):
        PinGroup("../escape")


def test_unmounted_bpffs_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNFKIT_BPFFS", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match=f"bpffs is not mounted at {tmp_path}"):
        ensure_bpffs()
