"""``vnfkit-agent``: the per-host agent that owns a host's data path.

It takes chain segments from an orchestrator over gRPC (``vnfkit/proto/vnfkit.proto``), writes
what it was asked for to SQLite before acting (``store``), makes the kernel match the merged
segments with ``chaining.host.HostDataPath`` pinned under its bpffs group (``core``), adopts
that pinned data path after a restart, and reports counters back (``report``, ``metrics``).

Modules: ``config`` (YAML config and its defaults), ``convert`` (Segment messages <-> host
plans), ``store`` (desired state), ``core`` (the agent's logic, no gRPC), ``server`` (the gRPC
services and the ``vnfkit-agent`` command), ``tls`` (mTLS credentials and development certs),
``report`` (Register, Heartbeat and the counter stream to the orchestrator), ``metrics``
(Prometheus ``/metrics``), ``check`` (``vnfkit-agent --check``), ``logs`` (JSON-lines logs).
"""
