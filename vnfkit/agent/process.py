"""An agent in its own process, serving a network namespace: what tests and the emulator run,
one per emulated host, each with its own state folder, pin group and socket.

    with AgentProcess("hostA", netns="vk12-hostA", state_dir=tmp / "a", group="emu-hostA") as agent:
        agent.stub().Apply(segment)

The agent listens on a unix socket (``agent.address``), which reaches it from any network
namespace; ``kill()`` is ``kill -9``; ``start()`` again runs a new agent on the same state.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vnfkit.agent.config import TlsFiles
from vnfkit.proto import load

pb, rpc = load()
ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    def __init__(self, name: str, *, state_dir: Path, group: str, netns: str | None = None,
                 tls: TlsFiles | None = None, orchestrator: str | None = None, metrics: str = "",
                 counter_interval: float = 0.2, heartbeat_interval: float = 0.5, listen: list[str] | None = None,
                 **extra: Any) -> None:
        # A unix socket path holds at most 107 bytes: a short folder of its own.
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"vk-{name[:12]}-"))
        self.socket = self.run_dir / "agent.sock"
        self.address = f"unix:{self.socket}"
        self.tls = tls
        self.group = group
        config: dict[str, Any] = {
            "name": name, "listen": [self.address, *(listen or [])], "state_dir": str(state_dir), "pin_group": group,
            "netns": netns, "insecure": tls is None, "orchestrator": orchestrator, "metrics": metrics,
            "counter_interval": counter_interval, "heartbeat_interval": heartbeat_interval, **extra}
        if tls is not None:
            config["tls"] = {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)}
        self.config_path = self.run_dir / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.run_dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._channels: list[grpc.Channel] = []

    def start(self, timeout: float = 120.0) -> AgentProcess:
        """Start the agent and wait until its health service says SERVING."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "vnfkit.agent", "--config", str(self.config_path)],
                                         stdout=log, stderr=log, cwd=ROOT)
        deadline = time.monotonic() + timeout
        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the agent exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the agent did not serve within {timeout} s:\n{self.log()[-4000:]}")
                time.sleep(0.1)

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        """A channel to the agent (mTLS with the agent's own client certificate if it has TLS)."""
        if credentials is None and self.tls is not None:
            from vnfkit.agent.tls import channel_credentials

            credentials = channel_credentials(self.tls.ca, self.tls.cert, self.tls.key)
        # Retry quickly while the agent starts (gRPC's default backoff grows to minutes).
        options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
        if credentials is None:
            return grpc.insecure_channel(self.address, options)
        from vnfkit.agent.tls import channel_options

        return grpc.secure_channel(self.address, credentials, options + channel_options(self.address))

    def stub(self) -> Any:
        """An Agent stub on a channel that lives as long as this object."""
        ch = self.channel()
        self._channels.append(ch)
        return rpc.AgentStub(ch)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind runs in the agent."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as systemd stops it; the data path stays. Its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> AgentProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
