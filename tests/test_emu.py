"""The emulator: topology.yaml checks, hosts/underlay/endpoints that route, netem, and a
``down`` that removes everything, also after ``up`` was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaining.local import mac_of
from vnfkit.descriptor import DescriptorError
from vnfkit.emu.emulation import EmuError, Emulation
from vnfkit.emu.topology import load_topology
from vnfkit.emu.traffic import HttpLoad, WebServer

ROOT = Path(__file__).resolve().parent.parent
TOPO = """\
name: {name}
hosts: [{{name: h1}}, {{name: h2}}, {{name: h3}}]
underlay: {{mtu: 1600}}
endpoints:
  - {{name: client, host: h1, role: client}}
  - {{name: web1, host: h3, role: server}}
  - {{name: lossy, host: h2, role: client, loss_pct: 50}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "topology.yaml"
    f.write_text(text)
    return f


@pytest.mark.parametrize("text, line, path, words", [
    (TOPO.replace("host: h3", "host: h9"), 6, "endpoints[1].host", "unknown host 'h9'"),
    (TOPO.replace("{name: h2}", "{name: h1}"), 2, "hosts[1].name", "already used by hosts[0]"),
    (TOPO.replace("role: server", "role: backend"), 6, "endpoints[1].role", "backend"),
    (TOPO.replace("mtu: 1600", "mtu: 100"), 3, "underlay.mtu", "1280"),
    (TOPO.replace("[{{name: h1}}", "[{{name: H1}}"), 2, "hosts[0].name", "is not valid"),
])
def test_bad_topologies_are_refused_with_positions(tmp_path: Path, text: str, line: int, path: str,
                                                   words: str) -> None:
    with pytest.raises(DescriptorError) as exc:
        load_topology(_write(tmp_path, text.format(name="t")))
    p = exc.value.problems[0]
    assert (p.line, p.path) == (line, path), p
    assert words in p.message, p


@pytest.mark.kernel
def test_delay_without_netem_is_refused_clearly(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("vnfkit.emu.emulation.STATE_DIR", tmp_path / "state")
    has_netem = "netem" in subprocess.run(["tc", "qdisc", "help"], capture_output=True, text=True).stderr
    text = TOPO.format(name="emudelay").replace("{mtu: 1600}", "{mtu: 1600, delay_ms: 2}")
    with Emulation(load_topology(_write(tmp_path, text))) as emu:
        try:
            emu.up()
        except EmuError as exc:
            assert "lack sch_netem" in str(exc) and "delay_ms" in str(exc)
        else:  # a kernel with netem: the delay is on every bridge port
            qdisc = subprocess.run(["ip", "netns", "exec", emu.state.underlay_ns, "tc", "qdisc", "show"],
                                   capture_output=True, text=True).stdout
            assert qdisc.count("delay 2ms") == 3, (has_netem, qdisc)


def _ns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


@pytest.mark.kernel
def test_hosts_route_endpoints_over_the_underlay_and_everything_goes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("vnfkit.emu.emulation.STATE_DIR", tmp_path / "state")
    topo = load_topology(_write(tmp_path, TOPO.format(name="emutest")))
    with Emulation(topo) as emu:
        state = emu.up()
        client, web1 = state.endpoints["client"], state.endpoints["web1"]
        # client (on h1) reaches web1 (on h3) through h1, the underlay and h3.
        res = subprocess.run(["ip", "netns", "exec", client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2",
                              web1.ip], capture_output=True, text=True)
        assert "received" in res.stdout and not res.stdout.count(" 0 received"), res.stdout
        web = WebServer("web1", web1.ns, web1.ip)
        try:
            with HttpLoad(client.ns, web1.ip, 8080, threads=1) as load:
                time.sleep(1.0)
            assert load.snapshot().answers["web1"] > 0
        finally:
            web.close()
        assert json.loads((tmp_path / "state" / "emutest.json").read_text())["prefix"] == emu.net.prefix
        # The lossy endpoint's link drops half of what reaches it, at random (xdp_impair); slow
        # enough pings that a lost ARP reply is retried within the run.
        lossy = state.endpoints["lossy"]
        # Static neighbours on that link, so the loss falls on the pings and not on the ARP
        # exchange they wait for (three lost ARP replies would silence the run).
        h2 = state.hosts["h2"]
        near = h2.ingress[0]
        for ns, dev, ip, mac in ((lossy.ns, lossy.ifname, lossy.gateway, mac_of(h2.ns, near)),
                                 (h2.ns, near, lossy.ip, mac_of(lossy.ns, lossy.ifname))):
            subprocess.run(["ip", "netns", "exec", ns, "ip", "neigh", "replace", ip, "lladdr", mac.hex(":"), "dev",
                            dev, "nud", "permanent"], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", lossy.ns, "ping", "-c", "100", "-i", "0.03", "-W", "0.2",
                        web1.ip], capture_output=True, text=True)
        passed, dropped = emu.impair_counters()[f"{lossy.ns}/{lossy.ifname}"]
        assert passed > 0 and dropped > 0
        w = emu.wiring()
        assert w["h1"].ingress and not w["h1"].egress and w["h3"].egress and w["h1"].underlay_ip
        made = [h.ns for h in state.hosts.values()] + [e.ns for e in state.endpoints.values()] + [state.underlay_ns]
        assert all(_ns_exists(ns) for ns in made)
    assert not any(_ns_exists(ns) for ns in made)
    assert not (tmp_path / "state" / "emutest.json").exists()


@pytest.mark.kernel
def test_down_after_up_was_killed(tmp_path: Path) -> None:
    env = {**os.environ, "VNFKIT_EMU_DIR": str(tmp_path / "state")}
    topo = _write(tmp_path, TOPO.format(name="emukill"))
    vnfkit = [sys.executable, "-m", "vnfkit.cli"]
    up = subprocess.run([*vnfkit, "emu", "up", str(topo)], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "state" / "emukill.json").read_text())
    made = [h["ns"] for h in state["hosts"].values()] + [state["underlay_ns"]]
    assert all(_ns_exists(ns) for ns in made)
    os.kill(state["pid"], signal.SIGKILL)  # no chance to clean up
    time.sleep(0.2)
    assert all(_ns_exists(ns) for ns in made)
    down = subprocess.run([*vnfkit, "emu", "down", "emukill"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "what a crash left" in down.stdout
    assert not any(_ns_exists(ns) for ns in made)
    again = subprocess.run([*vnfkit, "emu", "down", "emukill"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "no emulation 'emukill' is up" in again.stderr


@pytest.mark.kernel
def test_emu_up_runs_the_control_plane_and_a_deploy_carries_http(tmp_path: Path) -> None:
    """The commands a user types after the demo: 'emu up' brings hosts, agents, an orchestrator
    and web servers; 'deploy --emu' the service it wrote; HTTP goes through the chain; the
    orchestrator's /metrics shows it; 'emu down' leaves nothing behind."""
    import socket
    import urllib.request

    from vnfkit.emu.traffic import http_get

    env = {**os.environ, "VNFKIT_EMU_DIR": str(tmp_path / "state")}
    topo = tmp_path / "topology.yaml"
    topo.write_text((ROOT / "examples" / "topology.yaml").read_text().replace("name: demo", "name: emucp"))
    with socket.socket() as s:  # a free port for /metrics
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vnfkit = [sys.executable, "-m", "vnfkit.cli"]

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*vnfkit, *args], env=env, capture_output=True, text=True, timeout=240)
        assert (res.returncode == 0) == ok, res.stdout + res.stderr
        return res

    up = run("emu", "up", str(topo), "--metrics", f"127.0.0.1:{port}")
    state = json.loads((tmp_path / "state" / "emucp.json").read_text())
    try:
        assert "vnfkit deploy" in up.stdout and "--emu emucp" in up.stdout
        hosts = run("hosts", "--emu", "emucp").stdout
        assert all(h in hosts for h in ("h1", "h2", "h3"))
        service = state["extra"]["service"]
        deployed = run("deploy", service["path"], "--emu", "emucp").stdout
        assert "web" in deployed
        client = state["endpoints"]["client"]["ns"]
        answers = {http_get(client, service["vip"], 80).strip() for _ in range(20)}
        assert answers == {"served by web1", "served by web2"}
        deadline = time.monotonic() + 15
        while True:  # the agents report every 0.5 s
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            line = next((m for m in metrics.splitlines() if m.startswith("vnfkit_service_function_packets_total")
                         and 'function="fw"' in m and 'counter="rx"' in m), "")
            if line and float(line.split()[-1]) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert line and float(line.split()[-1]) > 0, metrics
        assert 'vnfkit_host_up{host="h3"} 1.0' in metrics
        assert "fw" in run("counters", "web", "--emu", "emucp").stdout
    finally:
        down = run("emu", "down", "emucp")
    assert "what a crash left" not in down.stdout  # the supervisor took it all down itself
    made = [h["ns"] for h in state["hosts"].values()] + [e["ns"] for e in state["endpoints"].values()]
    assert not any(_ns_exists(ns) for ns in made)
    assert not list(Path("/sys/fs/bpf/vnfkit").glob(f"emu-{state['prefix']}-*"))
    assert not (tmp_path / "state" / "emucp").exists()
    assert all(not _alive(p["pid"]) for p in state["agents"].values())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
