"""Real traffic between an emulation's endpoints: web servers that say who they are, and a
client that keeps asking, counting the answers by server.

Servers are Python's ``http.server`` in the server's namespace (a real TCP stack, real HTTP);
the client runs in threads that enter the client's namespace for each connection.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datapath import netns


class WebServer:
    """``python -m http.server`` on ``ip:port`` in netns ``ns``, answering "served by NAME"."""

    def __init__(self, name: str, ns: str, ip: str, port: int = 8080) -> None:
        self.name, self.ns, self.ip, self.port = name, ns, ip, port
        self._dir = tempfile.TemporaryDirectory(prefix=f"vnfkit-web-{name}-")
        Path(self._dir.name, "index.html").write_text(f"served by {name}\n")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", str(port), "--bind", ip,
             "--directory", self._dir.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web server {self.name} exited with {self.proc.returncode}")
            ss = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-Hltn", f"sport = :{self.port}"],
                                capture_output=True, text=True).stdout
            if ss.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"web server {self.name} is not listening after {timeout} s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._dir.cleanup()


def http_get(ns: str, host: str, port: int = 80, path: str = "/", timeout: float = 3.0) -> str:
    """One GET over a new connection from netns ``ns``; the body."""
    with netns.enter(ns):
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.connect()  # the socket is made here, inside ns
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()


@dataclass
class LoadStats:
    answers: Counter[str] = field(default_factory=Counter)  # by server name
    errors: Counter[str] = field(default_factory=Counter)   # by error type

    @property
    def total(self) -> int:
        return sum(self.answers.values())


class HttpLoad:
    """``threads`` clients in ``ns`` doing GETs to ``host:port`` back to back until stopped."""

    def __init__(self, ns: str, host: str, port: int = 80, threads: int = 2) -> None:
        self.ns, self.host, self.port = ns, host, port
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = http_get(self.ns, self.host, self.port)
                who = body.strip().removeprefix("served by ") or "?"
                with self._lock:
                    self.stats.answers[who] += 1
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.stats.errors[type(exc).__name__] += 1
                time.sleep(0.05)

    def snapshot(self) -> LoadStats:
        with self._lock:
            return LoadStats(Counter(self.stats.answers), Counter(self.stats.errors))

    def __enter__(self) -> HttpLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
