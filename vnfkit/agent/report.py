"""The agent as a client of its orchestrator: Register, Heartbeat, and counters on a client
stream (``ReportCounters``) every counter interval.

Nothing here can hold up the data path or the Agent service: the reports run in their own
threads; a report is made only when the stream takes one (a slow orchestrator's flow control
stalls the stream, not the agent, and no backlog builds up); an orchestrator that is away is
retried with backoff, registering again each time (it may have restarted and forgotten us).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from vnfkit.agent.logs import event
from vnfkit.agent.tls import channel_options
from vnfkit.proto import load

pb, rpc = load()
log = logging.getLogger("vnfkit.agent.report")
MAX_BACKOFF = 10.0


class Reporting(Protocol):
    """What reports: a host's agent (``HostAgent``), or a child orchestrator's domain
    (``vnfkit.orchestrator.domain.Domain``), which registers with its parent as one host."""

    name: str

    def state(self) -> Any: ...
    def counters(self) -> Any: ...


class Reporter:
    """``Reporter(agent, target, credentials, address, capabilities).start()``; ``stop()``;
    ``refresh()`` registers again (with capabilities that changed)."""

    def __init__(self, agent: Reporting, target: str, credentials: grpc.ChannelCredentials | None, *,
                 address: str, capabilities: Callable[[], Any], counter_interval: float,
                 heartbeat_interval: float) -> None:
        self.agent = agent
        self.target = target
        self.credentials = credentials
        self.address = address
        self.capabilities = capabilities
        self.counter_interval = counter_interval
        self.heartbeat_interval = heartbeat_interval
        self.registered = threading.Event()
        self._stop = threading.Event()
        self._refresh = threading.Event()
        self._call: Any = None
        self._threads = [threading.Thread(target=self._run, name="vnfkit-report", daemon=True),
                         threading.Thread(target=self._heartbeats, name="vnfkit-heartbeat", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        for t in self._threads:
            if t.ident is not None:  # a child domain starts reporting only once it has a host
                t.join(5)

    def refresh(self) -> None:
        """End the current counter stream after its next report, so the loop registers again."""
        self._refresh.set()

    def _channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.credentials, channel_options(self.target))

    def _register(self, stub: Any) -> None:
        self._refresh.clear()
        st = self.agent.state()
        reply = stub.Register(pb.RegisterRequest(host=self.agent.name, address=self.address,
                                                 capabilities=self.capabilities(), services=st.services), timeout=10)
        if reply.counter_interval_ms:
            self.counter_interval = reply.counter_interval_ms / 1000
        if reply.heartbeat_interval_ms:
            self.heartbeat_interval = reply.heartbeat_interval_ms / 1000
        self.registered.set()
        event(log, "registered", orchestrator=self.target, counter_interval=self.counter_interval,
              heartbeat_interval=self.heartbeat_interval)

    def _reports(self) -> Iterator[Any]:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            yield pb.CounterReport(host=self.agent.name, sequence=seq, counters=self.agent.counters())
            if self._stop.wait(self.counter_interval) or self._refresh.is_set():
                return

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                with self._channel() as channel:
                    stub = rpc.OrchestratorStub(channel)
                    self._register(stub)
                    backoff = 0.2
                    self._call = stub.ReportCounters.future(self._reports())
                    self._call.result()
            except grpc.FutureCancelledError:  # stop() cancelled the stream: not a failure
                if self._stop.is_set():
                    return
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                self.registered.clear()
                event(log, "orchestrator unreachable; retrying", level=logging.WARNING, orchestrator=self.target,
                      error=f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc))
            except Exception:  # noqa: BLE001 - a reporting bug must not end reporting
                log.exception("counter reporting failed")
            finally:
                self._call = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _heartbeats(self) -> None:
        with self._channel() as channel:
            stub = rpc.OrchestratorStub(channel)
            while not self._stop.wait(self.heartbeat_interval):
                if not self.registered.is_set():
                    continue
                try:
                    st = self.agent.state()
                    stub.Heartbeat(pb.HeartbeatRequest(
                        host=self.agent.name, timestamp_ns=time.monotonic_ns(), reset_epoch=st.reset_epoch,
                        services=[pb.Ref(service=s.service, generation=s.generation) for s in st.services
                                  if s.phase == pb.PHASE_APPLIED]), timeout=self.heartbeat_interval)
                except grpc.RpcError as exc:
                    event(log, "heartbeat failed", level=logging.WARNING, error=str(exc.code()))
