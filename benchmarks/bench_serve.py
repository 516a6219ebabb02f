"""Load on `entrgi serve` (loopback only, bounded in count and time): batching against none.

    python benchmarks/bench_serve.py [--config configs/tiny.yaml] [--requests 500] [--clients 32]
                                     [--malformed 0.1] [--guided 0.5] [--max-batch-size 8] [--limit-s 900]

Starts the server twice on free loopback ports, with ``--max-batch-size`` and with 1, and drives
each with the same ``--requests`` requests from ``--clients`` concurrent clients: a mix of guided
(EntRGi, M = 1) and unguided ones with their own seeds, and ``--malformed`` of them malformed (bad
JSON, K or steps over the limits, an unknown strategy). Prints, per server, the requests answered
2xx / 4xx / 5xx, those lost (no answer), p50 and p95 latency, requests per second and the batch
sizes LitServe formed; then the throughput ratio. Exits 1 if a request was lost, a malformed one
was not answered 4xx, a well-formed one was not answered 2xx, or the server died.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config: str, batch: int, limit_s: float):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "entrgi_core.cli", "serve", "--config", config, "--port", str(port),
                             "--max-batch-size", str(batch), "--batch-timeout", "0.05"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + min(limit_s, 300)
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server died at start: {proc.stderr.read()[-2000:]}")
        try:
            if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not come up in time")


def workload(n: int, malformed: float, guided: float, seed: int = 0) -> list[tuple[bool, bytes]]:
    """(malformed?, body) for each request, the same for every server."""
    from entrgi_core import tinyworld
    prompts = [json.loads(x)["prompt"] for x in tinyworld.PROMPTS.read_text().splitlines() if x]
    rng, out = random.Random(seed), []
    for i in range(n):
        body = {"prompt": rng.choice(prompts), "max_tokens": 16, "seed": rng.randrange(1000),
                "entrgi": {"num_samples": 2, "steps": 16}}
        if rng.random() < guided:
            body["entrgi"]["guidance"] = {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}}
        if rng.random() < malformed:
            kind = rng.randrange(4)
            if kind == 0:
                out.append((True, b'{"prompt": "broken'))
                continue
            if kind == 1:
                body["entrgi"]["num_samples"] = 10_000
            elif kind == 2:
                body["entrgi"]["steps"] = 10_000
            else:
                body["entrgi"]["guidance"] = {"class_path": "os.system"}
            out.append((True, json.dumps(body).encode()))
        else:
            out.append((False, json.dumps(body).encode()))
    return out


def drive(url: str, load: list, clients: int, limit_s: float) -> dict:
    def one(item):
        bad, data = item
        request = urllib.request.Request(url + "/v1/completions", data=data, method="POST",
                                         headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=limit_s) as r:
                reply = json.loads(r.read())
                return bad, r.status, time.perf_counter() - t0, reply["entrgi"]["batch"]["requests"]
        except urllib.error.HTTPError as e:
            return bad, e.code, time.perf_counter() - t0, None
        except OSError:
            return bad, None, time.perf_counter() - t0, None        # lost: no answer

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, load))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[1] is not None and 200 <= r[1] < 300]
    lat = sorted(r[2] for r in ok)
    batches = [r[3] for r in ok]
    return {"answered": sum(r[1] is not None for r in results), "2xx": len(ok),
            "4xx": sum(r[1] is not None and 400 <= r[1] < 500 for r in results),
            "5xx": sum(r[1] is not None and r[1] >= 500 for r in results),
            "lost": sum(r[1] is None for r in results),
            "malformed_not_4xx": sum(r[0] and not (r[1] is not None and 400 <= r[1] < 500) for r in results),
            "wellformed_not_2xx": sum((not r[0]) and not (r[1] is not None and 200 <= r[1] < 300) for r in results),
            "p50": statistics.median(lat) if lat else None, "p95": lat[int(0.95 * (len(lat) - 1))] if lat else None,
            "rps": len(results) / wall, "wall": wall, "mean_batch": statistics.mean(batches) if batches else None,
            "max_batch": max(batches) if batches else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--malformed", type=float, default=0.1)
    ap.add_argument("--guided", type=float, default=0.5)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--limit-s", type=float, default=900, help="the most seconds one server's load may take")
    args = ap.parse_args(argv)
    load = workload(args.requests, args.malformed, args.guided)
    rows, failed = [], False
    for batch in (args.max_batch_size, 1):
        proc, url = start(args.config, batch, args.limit_s)
        try:
            stats = drive(url, load, args.clients, args.limit_s)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        died = proc.returncode not in (0, -15)
        failed |= died or stats["lost"] > 0 or stats["malformed_not_4xx"] > 0 or stats["wellformed_not_2xx"] > 0
        rows.append((batch, stats, died))
    print(f"entrgi serve on {args.config}: {args.requests} requests ({sum(b for b, _ in load)} malformed, "
          f"~{args.guided:.0%} of the rest guided, K=2, T=L=16), {args.clients} concurrent clients, loopback")
    head = ["max_batch_size", "2xx", "4xx", "5xx", "lost", "p50 s", "p95 s", "req/s", "mean batch", "max batch",
            "server died"]
    print("  ".join(f"{h:>14}" for h in head))
    for batch, s, died in rows:
        cells = [batch, s["2xx"], s["4xx"], s["5xx"], s["lost"], f"{s['p50']:.2f}", f"{s['p95']:.2f}",
                 f"{s['rps']:.2f}", f"{s['mean_batch']:.2f}", s["max_batch"], died]
        print("  ".join(f"{str(c):>14}" for c in cells))
    print(f"throughput with batching / without: {rows[0][1]['rps'] / rows[1][1]['rps']:.2f}x")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
