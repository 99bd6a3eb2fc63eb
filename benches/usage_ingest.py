#!/usr/bin/env python3
"""What one busy gateway's usage costs the backend, in CPU time per second of traffic.

    python3 benches/usage_ingest.py [--keys 10000] [--seconds 30] [--cpu 1] [--json]

Mints --keys keys with `seed_keys` into a fresh SQLite data directory, starts
`tollgate-backend serve` pinned to core --cpu, and posts to `POST /internal/usage`, once a second,
a batch naming every key (what a gateway sends when all keys are busy: 10 k entries) in the
binary encoding gateways send (`protocol/src/usage_codec.rs`, ~0.5 MB) or, with --json, as JSON
(~0.9 MB). After three warm-up batches it reports the backend's utime+stime per second over --seconds
(which includes the backend applying pending usage every 10 s) and the ingest requests' latency.
The batches are built before the clock starts, so this script's own work is not in the window.
Uses the release binaries under $CARGO_TARGET_DIR (default target/); build them first:
`cargo build --release -p tollgate-backend -p tollgate-benches --bins`. Standard library only.
"""
import argparse
import json
import os
import sqlite3
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 18092
TOKEN = "usage-ingest-bench-feed-token"


def cpu_ticks(pid: int) -> int:
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


BINARY = "application/vnd.tollgate.usage-batch; v=1"


def binary_batch(gateway: str, batch_id: int, entries: list) -> bytes:
    out = [b"TGU1", struct.pack("<B", len(gateway)), gateway.encode(), struct.pack("<Q", batch_id)]
    for key_id, day, count, last_used in entries:
        k, d = key_id.encode(), day.encode()
        out += [struct.pack("<H", len(k)), k, struct.pack("<B", len(d)), d, struct.pack("<Qq", count, last_used)]
    return b"".join(out)


def post(body: bytes, content_type: str) -> float:
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/internal/usage",
        data=body,
        method="POST",
        headers={"content-type": content_type, "authorization": f"Bearer {TOKEN}"},
    )
    t = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as r:
        ack = json.loads(r.read())
    assert ack["duplicate"] is False, ack
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="post JSON instead of the binary form")
    a = ap.parse_args()
    bins = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    work = Path(tempfile.mkdtemp(prefix="tollgate-ingest."))
    data = work / "data"
    subprocess.run(
        [bins / "seed_keys", "--data-dir", data, "--count", str(a.keys), "--out", work / "keys.txt"],
        check=True,
    )
    ids = [r[0] for r in sqlite3.connect(data / "tollgate.db").execute("SELECT key_id FROM api_keys")]
    (work / "backend.toml").write_text(
        f'[backend]\nlisten = "127.0.0.1:{PORT}"\ndata_dir = "{data}"\n'
    )
    env = dict(os.environ, TOLLGATE_BACKEND_FEED_TOKEN=TOKEN, RUST_LOG="warn")
    backend = subprocess.Popen(
        ["taskset", "-c", str(a.cpu), bins / "tollgate-backend", "--config", work / "backend.toml", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "backend.log", "w"),
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        gateway = f"ingest-bench-{int(time.time())}"
        now = int(time.time())
        def batch(i: int) -> bytes:
            entries = [(k, day, 6, now + i) for k in ids]
            if not a.json:
                return binary_batch(gateway, i + 1, entries)
            return json.dumps({
                "gateway_id": gateway,
                "batch_id": i + 1,
                "entries": [{"key_id": k, "day": d, "count": c, "last_used": t} for k, d, c, t in entries],
            }).encode()

        content_type = "application/json" if a.json else BINARY
        batches = [batch(i) for i in range(3 + a.seconds)]
        for b in batches[:3]:
            post(b, content_type)
        t0, w0, latencies = cpu_ticks(backend.pid), time.monotonic(), []
        for b in batches[3:]:
            start = time.monotonic()
            latencies.append(post(b, content_type))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - start)))
        t1, w1 = cpu_ticks(backend.pid), time.monotonic()
        latencies.sort()
        hz = os.sysconf("SC_CLK_TCK")
        print(
            f"{len(ids)} keys, {len(latencies)} {'JSON' if a.json else 'binary'} batches of "
            f"{len(batches[-1]) // 1024} KiB: backend CPU "
            f"{(t1 - t0) * 1000 / hz / (w1 - w0):.1f} ms per second; ingest request median "
            f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )
    finally:
        backend.terminate()
        backend.wait()


if __name__ == "__main__":
    main()
