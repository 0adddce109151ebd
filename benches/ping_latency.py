"""Client-observed round trips of redis PINGs through ADDRESS, on
CONNECTIONS connections for SECONDS. Each connection answers one PING
before the clock starts: a delayed firedrill tcp service also delays a new
connection's upstream setup, which is not the per-request delay under test.

Usage: python3 benches/ping_latency.py 127.0.0.1:16379 4 10
Prints one line: requests p50_ms p99_ms max_ms
"""

import socket
import sys
import threading
import time

PING, PONG = b"PING\r\n", b"+PONG\r\n"


def round_trip(connection):
    connection.sendall(PING)
    answer = b""
    while len(answer) < len(PONG):
        chunk = connection.recv(len(PONG) - len(answer))
        if not chunk:
            raise ConnectionError("closed before answering PING")
        answer += chunk
    if answer != PONG:
        raise ConnectionError(f"answered {answer!r} to PING")


def main():
    address, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    host, port = address.rsplit(":", 1)
    connections = []
    for _ in range(count):
        connection = socket.create_connection((host, int(port)), timeout=10)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        round_trip(connection)
        connections.append(connection)

    samples = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def pinger(connection):
        mine = []
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            round_trip(connection)
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=pinger, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print(f"{len(samples)} {pick(0.5):.3f} {pick(0.99):.3f} {samples[-1]:.3f}")


if __name__ == "__main__":
    main()
