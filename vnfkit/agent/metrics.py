"""``/metrics`` in Prometheus text format: a collector that reads the live counters at each
scrape (nothing is copied in between), served by prometheus-client's HTTP server.

    vnfkit_function_packets_total{service, function, counter}
    vnfkit_function_bytes_total{service, function, counter}
    vnfkit_hop_packets_total{spi, si}
    vnfkit_path_packets_total{service, path}
    vnfkit_host_packets_total{counter}         forwarder (sff_), classifier (cls_), NSH receive (rx_)
    vnfkit_reset_epoch                          changes when every counter restarts from 0
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vnfkit.agent.core import HostAgent


class AgentCollector(Collector):
    def __init__(self, agent: HostAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        c = self.agent.counters()
        fp = CounterMetricFamily("vnfkit_function_packets", "Packets by VNF function instance counter",
                                 labels=["service", "function", "counter"])
        fb = CounterMetricFamily("vnfkit_function_bytes", "Bytes by VNF function instance counter",
                                 labels=["service", "function", "counter"])
        for f in c.functions:
            for name, v in sorted(f.counters.items()):
                fp.add_metric([f.service, f.function, name], v.packets)
                fb.add_metric([f.service, f.function, name], v.bytes)
        hops = CounterMetricFamily("vnfkit_hop_packets", "Packets the forwarder handed on, by (SPI, SI)",
                                   labels=["spi", "si"])
        for h in c.hops:
            hops.add_metric([str(h.spi), str(h.si)], h.packets)
        paths = CounterMetricFamily("vnfkit_path_packets", "Packets that entered a path's segments on this host",
                                    labels=["service", "path"])
        for p in c.paths:
            paths.add_metric([p.service, p.path], p.packets)
        host = CounterMetricFamily("vnfkit_host_packets", "Forwarder, classifier and NSH receive counters",
                                   labels=["counter"])
        for name, value in sorted(c.host_counters.items()):
            host.add_metric([name], value)
        epoch = GaugeMetricFamily("vnfkit_reset_epoch", "When the data path's counters started from 0 (ns)")
        epoch.add_metric([], c.reset_epoch)
        yield from (fp, fb, hops, paths, host, epoch)


def serve_metrics(agent: HostAgent, address: str) -> Any:
    """Serve ``/metrics`` on ``host:port``; the HTTP server (``.shutdown()`` stops it)."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
    return server
