"""``vnfkit-agent``: run the host agent, or ``--check`` the host and exit.

    vnfkit-agent [--config /etc/vnfkit/agent.yaml] [--insecure] [--netns NS] [--listen ADDR] ...
    vnfkit-agent --check

Only the config is read before the network namespace (``--netns`` or ``netns:``) is joined:
every thread the agent and its libraries start must be born in the namespace it serves.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vnfkit-agent", description="vnfkit's host agent: owns this host's data path")
    p.add_argument("--config", type=Path, help="YAML config file (default: /etc/vnfkit/agent.yaml if present)")
    p.add_argument("--check", action="store_true", help="report capabilities and problems, exit non-zero on problems")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="serve without TLS or client certificates (development only)")
    p.add_argument("--netns", help="serve the network namespace NS (/run/netns/NS)")
    p.add_argument("--name", help="this host's name")
    p.add_argument("--listen", action="append", help="gRPC address (repeatable): host:port or unix:PATH")
    p.add_argument("--state-dir", dest="state_dir", help="where the desired state lives")
    p.add_argument("--pin-group", dest="pin_group", help="bpffs folder name under /sys/fs/bpf/vnfkit/")
    p.add_argument("--orchestrator", help="the Orchestrator service's address")
    p.add_argument("--metrics", help="host:port of /metrics ('' turns it off)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from vnfkit.agent.config import ConfigError, load_config  # yaml and the standard library: no threads

    overrides = {k: getattr(args, k) for k in ("insecure", "netns", "name", "listen", "state_dir", "pin_group",
                                               "orchestrator", "metrics")}
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"vnfkit-agent: {exc}", file=sys.stderr)
        return 2
    if cfg.netns:
        from datapath.netns import join

        join(cfg.netns)
    from vnfkit.agent import logs

    if args.check:
        from google.protobuf import json_format

        from vnfkit.agent.check import capabilities

        caps = capabilities(cfg)
        print(json.dumps(json_format.MessageToDict(caps), indent=2))
        for problem in caps.problems:
            print(f"problem: {problem}", file=sys.stderr)
        return 1 if caps.problems else 0
    logs.setup(cfg.log_level)
    from vnfkit.agent.server import serve

    try:
        running = serve(cfg)
    except (OSError, ValueError) as exc:
        print(f"vnfkit-agent: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
