"""Opens N TCP connections to ADDRESS (a proxy in front of redis-server),
checks each with one PING, prints "open N" and holds them, idle, until it
is killed. benches/run.sh reads the proxy's RSS meanwhile to get memory per
open connection.

Usage: python3 benches/hold_connections.py 127.0.0.1:16379 10000
"""

import resource
import signal
import socket
import sys


def main():
    address, count = sys.argv[1], int(sys.argv[2])
    host, port = address.rsplit(":", 1)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    connections = []
    for _ in range(count):
        connections.append(socket.create_connection((host, int(port)), timeout=30))
    # One round trip each, so every connection reaches the upstream.
    for connection in connections:
        connection.sendall(b"PING\r\n")
    for number, connection in enumerate(connections):
        answer = b""
        while len(answer) < 7:
            chunk = connection.recv(7 - len(answer))
            if not chunk:
                sys.exit(f"connection {number} closed before answering PING")
            answer += chunk
        if answer != b"+PONG\r\n":
            sys.exit(f"connection {number} answered {answer!r} to PING")
    print(f"open {count}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
