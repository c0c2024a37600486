"""The agent's configuration: a YAML file whose every key has a default that works on one
machine, and command-line flags over it.

    # /etc/vnfkit/agent.yaml (every key optional)
    name: host-a                     # the host's name in plans and reports (default: hostname)
    listen: ["127.0.0.1:50051"]      # gRPC addresses; "unix:/run/vnfkit/agent.sock" works too
    advertise: ""                    # the address the orchestrator is told (default: the first listen)
    state_dir: /var/lib/vnfkit-agent # the desired state (agent.db)
    pin_group: ""                    # bpffs folder /sys/fs/bpf/vnfkit/<group> (default: agent-<name>)
    vnfs_dir: ""                     # where VNF names resolve (default: the repository's vnfs/)
    netns: null                      # a network namespace to serve (emulated hosts)
    insecure: false                  # plain gRPC: development only, announced at start
    tls:                             # mTLS: this agent's certificate and the CA its peers are signed by
      ca: /etc/vnfkit/certs/ca.pem
      cert: /etc/vnfkit/certs/agent.pem
      key: /etc/vnfkit/certs/agent.key
    orchestrator: null               # host:port (or unix:path) of the Orchestrator service
    counter_interval: 1.0            # seconds between counter reports
    heartbeat_interval: 5.0
    metrics: "127.0.0.1:9464"        # Prometheus /metrics; "" turns it off
    interfaces: []                   # interfaces this host must have (--check)
    ingress: []                      # interfaces facing clients (where services' classifier rules go)
    egress: []                       # interfaces facing servers (where replies of symmetric paths arrive)
    underlay: ""                     # the interface NSH leaves and arrives on
    cpus: 4                          # what the orchestrator may place here
    memory_mb: 4096
    drain: 0.05                      # seconds between a commit and the clean-up after it
    log_level: info
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datapath.errors import VnfkitError

REPO_VNFS = Path(__file__).resolve().parents[2] / "vnfs"
DEFAULT_CONFIG = Path("/etc/vnfkit/agent.yaml")
DEFAULT_CERTS = Path("/etc/vnfkit/certs")


class ConfigError(VnfkitError):
    """A config file the agent cannot use; the message names the key."""


@dataclass
class TlsFiles:
    ca: Path = DEFAULT_CERTS / "ca.pem"
    cert: Path = DEFAULT_CERTS / "agent.pem"
    key: Path = DEFAULT_CERTS / "agent.key"


@dataclass
class AgentConfig:
    name: str = field(default_factory=socket.gethostname)
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:50051"])
    advertise: str = ""
    state_dir: Path = Path("/var/lib/vnfkit-agent")
    pin_group: str = ""
    vnfs_dir: Path = REPO_VNFS
    netns: str | None = None
    insecure: bool = False
    tls: TlsFiles = field(default_factory=TlsFiles)
    orchestrator: str | None = None
    counter_interval: float = 1.0
    heartbeat_interval: float = 5.0
    metrics: str = "127.0.0.1:9464"
    interfaces: list[str] = field(default_factory=list)
    ingress: list[str] = field(default_factory=list)
    egress: list[str] = field(default_factory=list)
    underlay: str = ""
    cpus: int = 4
    memory_mb: int = 4096
    drain: float = 0.05
    log_level: str = "info"

    @property
    def group(self) -> str:
        return self.pin_group or f"agent-{self.name}"

    @property
    def address(self) -> str:
        return self.advertise or self.listen[0]


_PATHS = {"state_dir", "vnfs_dir"}
_FLOATS = {"counter_interval", "heartbeat_interval", "drain"}


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """The config file at ``path`` (none: all defaults; the default path if it exists) with
    ``overrides`` (command-line flags) over it; ConfigError naming a bad key."""
    data: dict[str, Any] = {}
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config is a mapping of keys to values")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(AgentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown key(s) {unknown} (known: {sorted(known)})")
    cfg = AgentConfig()
    for key, value in data.items():
        try:
            if key == "tls":
                if not isinstance(value, dict) or set(value) - {"ca", "cert", "key"}:
                    raise ValueError("tls takes ca, cert and key (file paths)")
                value = TlsFiles(**{k: Path(v) for k, v in value.items()})
            elif key == "listen":
                value = [value] if isinstance(value, str) else [str(v) for v in value]
                if not value:
                    raise ValueError("at least one address")
            elif key in _PATHS:
                value = Path(value)
            elif key in _FLOATS:
                value = float(value)
                if value <= 0 and key != "drain":
                    raise ValueError("must be > 0")
            elif key in ("insecure",):
                if not isinstance(value, bool):
                    raise ValueError("true or false")
            elif key in ("interfaces", "ingress", "egress"):
                value = [str(v) for v in value]
            elif key in ("cpus", "memory_mb"):
                value = int(value)
                if value <= 0:
                    raise ValueError("must be > 0")
            elif value is not None:
                value = str(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path or 'config'}: {key}: {exc}") from exc
        setattr(cfg, key, value)
    return cfg
