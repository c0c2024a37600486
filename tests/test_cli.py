"""The `vnfkit` command as a user runs it: the demo, and clear errors with exit code 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
BPF = Path(__file__).parent / "bpf"


def vnfkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vnfkit.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    """The README's first command: the chain demo across three emulated hosts."""
    res = vnfkit("demo", "--seconds", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "result: OK" in res.stdout and "What you saw" in res.stdout
    # It cleaned up after itself: no namespace or pin group of the demo remains.
    prefix = res.stdout.split("netns ", 1)[1].split()[0].split("-")[0].rstrip(",")
    assert prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not list(Path("/sys/fs/bpf/vnfkit").glob(f"emu-{prefix}-*"))


def test_engine_demo_counts_match() -> None:
    res = vnfkit("demo", "--engine", "--seconds", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "counts match" in res.stdout
    assert "native mode" in res.stdout
    prefix = res.stdout.split("removed namespaces", 1)[1].split()[0].split("-")[0]
    assert prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not list(Path("/sys/fs/bpf/vnfkit").glob(f"demo-{prefix}"))


def test_verifier_rejection_is_one_clear_error() -> None:
    res = vnfkit("load", str(BPF / "oob_read.c"))
    assert res.returncode == 1
    assert "verifier rejected program 'oob_read'" in res.stderr
    assert "oob_read.c:14:" in res.stderr
    assert "Traceback" not in res.stderr
    verbose = vnfkit("--verbose", "load", str(BPF / "oob_read.c"))
    assert "full verifier log" in verbose.stderr and "processed" in verbose.stderr


def test_compile_error_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text("int x(void) { return y; }\n")
    res = vnfkit("compile", str(src))
    assert res.returncode == 1
    assert f"{src}:1:" in res.stderr and "undeclared identifier 'y'" in res.stderr


def test_load_and_pin_then_list_and_detach() -> None:
    group = "test-cli-load"
    try:
        res = vnfkit("load", str(BPF / "maps.c"), "--pin", group)
        assert res.returncode == 0, res.stderr
        assert "routes" in res.stdout and "LPM_TRIE" in res.stdout
        listed = vnfkit("list")
        assert group in listed.stdout
    finally:
        vnfkit("detach", group)
    assert not Path(f"/sys/fs/bpf/vnfkit/{group}").exists()
    missing = vnfkit("detach", group)
    assert missing.returncode == 1 and f"no pin group '{group}'" in missing.stderr


def test_probe_json() -> None:
    res = vnfkit("probe", "--json")
    assert res.returncode == 0 and '"xdp_native_veth": true' in res.stdout


def test_certs_makes_a_ca_and_never_replaces_one_silently(tmp_path: Path) -> None:
    first = vnfkit("certs", str(tmp_path / "c"))
    assert first.returncode == 0, first.stderr
    assert all((tmp_path / "c" / f).exists() for f in ("ca.pem", "agent.pem", "orchestrator.key", "client.pem"))
    ca = (tmp_path / "c" / "ca.pem").read_bytes()
    again = vnfkit("certs", str(tmp_path / "c"))
    assert again.returncode == 1 and "--force replaces it" in again.stderr
    assert (tmp_path / "c" / "ca.pem").read_bytes() == ca
    assert vnfkit("certs", str(tmp_path / "c"), "--force").returncode == 0
    assert (tmp_path / "c" / "ca.pem").read_bytes() != ca
