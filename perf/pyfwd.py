"""The pure-Python forwarder peer: ``python -m perf.pyfwd IN OUT`` reads every frame that
arrives on IN (AF_PACKET) and writes it unchanged out of OUT, one recv and one send per
frame: what a user-space VNF written in plain Python gets out of a CPU. Runs until SIGINT or
SIGTERM and then prints how many frames it forwarded."""

from __future__ import annotations

import signal
import socket
import sys

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m perf.pyfwd IN_IFNAME OUT_IFNAME", file=sys.stderr)
        return 2
    in_if, out_if = argv
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    rx.bind((in_if, 0))
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: never receives
    tx.bind((out_if, 0))
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True
        rx.close()  # unblocks recvfrom

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    forwarded = 0
    recv, send = rx.recvfrom, tx.send
    try:
        while not stop:
            frame, addr = recv(2048)
            if addr[2] != PACKET_OUTGOING:
                send(frame)
                forwarded += 1
    except OSError:
        if not stop:
            raise
    print(f"forwarded {forwarded}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
