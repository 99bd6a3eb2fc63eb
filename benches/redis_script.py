#!/usr/bin/env python3
"""What the gateway's Redis quota script costs Redis, per decision, at steady state.

    python3 benches/redis_script.py [--port 6379] [--keys 1000] [--rate 3.3] [--batch 1]

Runs the RESERVE script of gateway/src/quota/redis.rs (read from the source, so it measures the
script as committed) against a Redis on 127.0.0.1: --keys API keys at --rate requests a second
each, limits of 1e9 (never a rejection, coarse slots, as in benches/run.sh), on a simulated clock
that starts now and runs 90 s, --batch decisions per script call, pipelined 64 calls deep. Over
the last 30 simulated seconds (the log of each key is then a full window long) it reports Redis's
CPU time per decision (INFO cpu) and the per-command figures of INFO commandstats (it resets
the statistics: point it at a Redis of your own, e.g. `redis-server --port 16379`). Keys live
under a private prefix and are deleted at the end. Standard library only.
"""
import argparse
import re
import socket
import struct
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def script() -> str:
    src = (ROOT / "gateway/src/quota/redis.rs").read_text()
    part = lambda name: re.search(rf'const {name}: &str = r#"(.*?)"#;', src, re.S).group(1)
    return part("COMMON") + part("RESERVE")


def command(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Redis:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _reply(self):
        """One complete RESP reply from the buffer, reading more as needed."""
        while True:
            try:
                value, end = self._parse(0)
                self.buf = self.buf[end:]
                return value
            except (IndexError, ValueError):  # (incomplete: read more)
                more = self.sock.recv(1 << 20)
                if not more:
                    raise ConnectionError("Redis closed the connection")
                self.buf += more

    def _parse(self, i):
        buf = self.buf
        j = buf.index(b"\r\n", i)
        kind, head = buf[i:i + 1], buf[i + 1:j]
        if kind in (b"+", b":"):
            return head, j + 2
        if kind == b"-":
            raise RuntimeError(head.decode())
        if kind == b"$":
            n = int(head)
            if n < 0:
                return None, j + 2
            if j + 2 + n + 2 > len(buf):
                raise IndexError
            return buf[j + 2:j + 2 + n], j + 2 + n + 2
        if kind == b"*":
            k, items = j + 2, []
            for _ in range(int(head)):
                v, k = self._parse(k)
                items.append(v)
            return items, k
        raise RuntimeError(f"unexpected reply {buf[i:i + 20]!r}")

    def call(self, *args):
        self.sock.sendall(command(*args))
        return self._reply()

    def pipeline(self, commands):
        self.sock.sendall(b"".join(commands))
        for _ in commands:
            self._reply()


def cpu_seconds(r: Redis) -> float:
    info = r.call("INFO", "cpu").decode()
    return sum(float(v) for v in re.findall(r"used_cpu_(?:sys|user):([\d.]+)", info))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=3.3, help="requests a second per key")
    ap.add_argument("--batch", type=int, default=1, help="decisions per script call")
    a = ap.parse_args()

    r = Redis(a.port)
    sha = r.call("SCRIPT", "LOAD", script()).decode()
    prefix = f"tgbench{int(time.time() * 1000)}"
    start = int(time.time() * 1000)
    per_ms = a.keys * a.rate / 1000  # decisions per simulated millisecond
    total, measured_from = int(90_000 * per_ms), int(60_000 * per_ms)
    rng = __import__("random").Random(1)
    calls, batch, keys, args = [], 0, [], []
    cpu0 = None
    for i in range(total):
        if i == measured_from:
            if keys:
                calls.append(command("EVALSHA", sha, len(keys), *keys, *args))
                keys, args = [], []
            r.pipeline(calls)
            calls = []
            r.call("CONFIG", "RESETSTAT")
            cpu0 = cpu_seconds(r)
        now = start + int(i / per_ms)
        k = rng.randrange(a.keys)
        keys += [f"{prefix}:{{{k:016x}}}:q", f"{prefix}:{{{k:016x}}}:l"]
        args.append(struct.pack("<qdddq", now, 1e9, 1e9, 1.0, 58))
        if len(args) == a.batch:
            calls.append(command("EVALSHA", sha, len(keys), *keys, *args))
            keys, args = [], []
        if len(calls) == 64:
            r.pipeline(calls)
            calls = []
    if keys:
        calls.append(command("EVALSHA", sha, len(keys), *keys, *args))
    r.pipeline(calls)
    decisions = total - measured_from
    cpu = cpu_seconds(r) - cpu0
    stats = r.call("INFO", "commandstats").decode()
    print(f"{decisions} decisions, {a.batch} per call: Redis CPU {cpu * 1e6 / decisions:.2f} µs per decision")
    for name, n, per in re.findall(r"cmdstat_(\w+):calls=(\d+),usec=\d+,usec_per_call=([\d.]+)", stats):
        print(f"  {name:10} {int(n):8} calls  {per:>6} µs per call")
    cursor = b"0"
    while True:
        cursor, found = r.call("SCAN", cursor, "MATCH", f"{prefix}:*", "COUNT", 1000)
        if found:
            r.call("UNLINK", *found)
        if cursor == b"0":
            break


if __name__ == "__main__":
    main()
