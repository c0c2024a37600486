"""The orchestrator's ``/metrics`` in Prometheus text format: every deployed service's counters
as the agents last reported them (``Orchestrator.service_counters``), read at each scrape.

    vnfkit_service_function_packets_total{service, function, host, counter}
    vnfkit_service_function_bytes_total{service, function, host, counter}
    vnfkit_service_path_packets_total{service, path}
    vnfkit_service_hop_packets_total{service, host, spi, si}
    vnfkit_service_generation{service}
    vnfkit_host_up{host}                         1 while the agent's heartbeats arrive

Names differ from an agent's (``vnfkit_function_*``) so one Prometheus can scrape both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vnfkit.orchestrator.core import Orchestrator


class OrchestratorCollector(Collector):
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def collect(self) -> Iterator[Metric]:
        fp = CounterMetricFamily("vnfkit_service_function_packets", "Packets by function instance counter",
                                 labels=["service", "function", "host", "counter"])
        fb = CounterMetricFamily("vnfkit_service_function_bytes", "Bytes by function instance counter",
                                 labels=["service", "function", "host", "counter"])
        paths = CounterMetricFamily("vnfkit_service_path_packets", "Packets that entered a path",
                                    labels=["service", "path"])
        hops = CounterMetricFamily("vnfkit_service_hop_packets", "Packets a host's forwarder handed on, by (SPI, SI)",
                                   labels=["service", "host", "spi", "si"])
        gen = GaugeMetricFamily("vnfkit_service_generation", "The deployed generation of a service",
                                labels=["service"])
        for name, svc in sorted(self.orch.service_counters().items()):
            gen.add_metric([name], svc["generation"])
            for fid, c in sorted(svc["functions"].items()):
                host = str(c.get("host", ""))
                for counter, value in sorted(c.items()):
                    if counter == "host":
                        continue
                    pkts, nbytes = _pair(value)
                    fp.add_metric([name, fid, host, counter], pkts)
                    fb.add_metric([name, fid, host, counter], nbytes)
            for path, n in sorted(svc["paths"].items()):
                paths.add_metric([name, path], n)
            for key, n in sorted(svc["hops"].items()):
                host, spi, si = (key.split(":") + ["", "", ""])[:3]  # "host:spi:si"
                hops.add_metric([name, host, spi, si], n)
        up = GaugeMetricFamily("vnfkit_host_up", "1 while the host's agent heartbeats", labels=["host"])
        for h in self.orch.hosts():
            up.add_metric([h.name], 1 if h.alive else 0)
        yield from (fp, fb, paths, hops, gen, up)


def _pair(value: Any) -> tuple[float, float]:
    """A reported counter: ``[packets, bytes]`` or a bare packet count."""
    if isinstance(value, (list, tuple)):
        return float(value[0]), float(value[1]) if len(value) > 1 else 0.0
    return float(value), 0.0


def serve_metrics(orch: Orchestrator, address: str) -> Any:
    """Serve ``/metrics`` on ``host:port``; the HTTP server (``.shutdown()`` stops it)."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchestratorCollector(orch))
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
    return server
