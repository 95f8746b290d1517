"""Interleaved A/B of the in-process order-select between two source trees (for example
main in a ``git worktree`` and a branch): each round runs one measurement process per
tree, alternating which goes first, so that the drift of a shared machine falls on both.
Prints, per tree and size, the median over rounds of the order-select's p50 and p99
(Flask test client, run.py's part 1), the PatientState build from the decoded body
(bench_state.py), and each one's ratio to json.loads of the same body (the stable
figure on a busy machine).
Run: python benchmarks/ab.py /path/to/tree-a /path/to/tree-b [--rounds 5] [--sizes 300,10000]"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def measure(sizes: list[int]) -> dict[int, dict[str, float]]:
    """One tree's figures, in this process (its tree is first on sys.path)."""
    import gc
    import time

    from benchmarks.payloads import NOW, PID, body_bytes
    from benchmarks.run import BENCH_CONFIG, pct, tune_gc
    from cds_service import create_app
    from cds_service.decode import decode_body
    from cds_service.pool import ResourcePool
    from hooks.builder import build_state
    from hooks.services import SERVICES
    client = create_app(BENCH_CONFIG).test_client()
    out = {}
    for n in sizes:
        raw = body_bytes(n)
        reps = 300 if n <= 300 else 20
        body = decode_body(raw, SERVICES[0].decoder)  # bench_state's figure: the state built from the decoded body

        plain = json.loads(raw)  # the fallback: the body parsed as plain JSON, every resource converted

        def build(body=body):
            pool = ResourcePool()
            pool.add_all(body["prefetch"].items())
            build_state(pool, PID, NOW, drafts=[e["resource"] for e in body["context"]["draftOrders"]["entry"]])
        for _ in range(min(20, reps)):
            client.post("/cds-services/mg-order-select", data=raw, content_type="application/json")
            build()
            build(plain)
        tune_gc()
        times, loads, builds, plains = [], [], [], []
        for _ in range(reps):
            t = time.perf_counter()
            assert client.post("/cds-services/mg-order-select", data=raw, content_type="application/json").status_code == 200
            times.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            json.loads(raw)
            loads.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            build()
            builds.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            build(plain)
            plains.append((time.perf_counter() - t) * 1000)
        gc.unfreeze()
        loads_p50 = pct(loads, 50)
        out[n] = {"p50": pct(times, 50), "p99": pct(times, 99), "ratio": pct(times, 50) / loads_p50,
                  "state_ms": pct(builds, 50), "state_ratio": pct(builds, 50) / loads_p50,
                  "plain_ratio": pct(plains, 50) / loads_p50}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="300,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[Path, list[dict]] = {tree: [] for tree in args.trees}
    for r in range(args.rounds):
        for tree in (args.trees if r % 2 == 0 else args.trees[::-1]):
            env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "CDS_LOG_LEVEL": "ERROR"}
            # this file's measure, importing the tree's modules: the same measurement for both
            code = (f"import json, sys, importlib.util as u; sys.path.insert(0, {str(tree.resolve())!r}); "
                    f"s = u.spec_from_file_location('ab', {str(Path(__file__).resolve())!r}); "
                    "m = u.module_from_spec(s); s.loader.exec_module(m); "
                    f"print(json.dumps(m.measure({sizes!r})))")
            result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True,
                                    check=True)
            runs[tree].append({int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()})
    keys = ("p50", "p99", "ratio", "state_ms", "state_ratio", "plain_ratio")
    print(f"# medians of {args.rounds} interleaved rounds; ratios are to json.loads of the same body "
          "(plain: the state built from the body parsed as plain JSON)")
    print(f"{'tree':<28} {'size':>6} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7} {'state ms':>9} {'state ratio':>12} "
          f"{'plain ratio':>12}")
    for tree, results in runs.items():
        for n in sizes:
            med = {k: statistics.median(r[n][k] for r in results) for k in keys}
            print(f"{str(tree)[-28:]:<28} {n:>6} {med['p50']:>8.2f} {med['p99']:>8.2f} {med['ratio']:>7.3f} "
                  f"{med['state_ms']:>9.2f} {med['state_ratio']:>12.3f} {med['plain_ratio']:>12.3f}")
    first, second = (runs[t] for t in args.trees)
    print(f"# second / first, median of the per-round quotients ({args.trees[1]} / {args.trees[0]})")
    for n in sizes:
        quotients = {k: statistics.median(b[n][k] / a[n][k] for a, b in zip(first, second)) for k in keys}
        print(f"{'':<28} {n:>6} " + " ".join(f"{k} {v:.3f}" for k, v in quotients.items()))


if __name__ == "__main__":
    main()
