"""The mg-cds benchmark suite (``make bench``). Prints tables and writes
the latency plot to the temporary directory (``--plot benchmarks/latency.png``
updates the committed one); it measures, it does not assert. Everything runs on
127.0.0.1, bounded in requests and seconds.

1. In-process: order-select with 10 .. 10,000 Observations (+200 MedicationRequests,
   21 Conditions): p50/p99 and the ratio to json.loads of the same body, under the
   same GC settings as the gunicorn workers.
2. HTTP under gunicorn: 1, 8, 32 concurrent clients, 300-resource request, mg-cds
   vs a no-op JSON-parsing Flask app vs a validate-everything Flask app: req/s,
   p50/p99, and the servers' own CPU time per request (Linux /proc).
3. Fallback fetch: no prefetch, a local FHIR server answering each query after 20 ms.
4. Memory: peak RSS of one worker process serving the 10,000-resource request.
"""
from __future__ import annotations

import gc
import http.client
import json
import multiprocessing as mp
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.payloads import body_bytes, order_select_request  # noqa: E402
from cds_service.malloc import pad_heap_top  # noqa: E402

SIZES = (10, 100, 300, 1_000, 10_000)
NOW = "2026-11-25T12:00:00Z"
GC_GEN0 = 50_000
# 10,000 Observations are 6.6 MB of JSON: above the 5 MiB default body limit.
BENCH_CONFIG = {"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW, "CDS_LOG_LEVEL": "ERROR",
                "CDS_MAX_BODY_BYTES": 64 * 1024 * 1024}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def tune_gc() -> None:
    """What gunicorn_conf does: heap-top padding in the master, GC frozen in each worker."""
    pad_heap_top()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0, 50, 100)


# ------------------------------------------------------------------ 1. in-process
def in_process() -> list[dict]:
    import orjson

    from cds_service import create_app
    app = create_app(BENCH_CONFIG)
    client = app.test_client()
    rows = []
    print("\n## 1. In-process order-select (Flask test client)")
    print(f"{'obs':>6} {'KB':>7} {'reps':>5} {'p50 ms':>8} {'p99 ms':>8} {'json.loads p50':>15} {'orjson p50':>11} "
          f"{'ratio p50':>10}")
    for n in SIZES:
        raw = body_bytes(n)
        reps = 600 if n <= 300 else (200 if n <= 1000 else 40)
        for _ in range(min(20, reps)):
            client.post("/cds-services/mg-order-select", data=raw, content_type="application/json")
        tune_gc()
        times, loads, oj = [], [], []
        for _ in range(reps):
            t = time.perf_counter()
            resp = client.post("/cds-services/mg-order-select", data=raw, content_type="application/json")
            times.append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 200
        for _ in range(reps):
            t = time.perf_counter()
            json.loads(raw)
            loads.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            orjson.loads(raw)
            oj.append((time.perf_counter() - t) * 1000)
        gc.unfreeze()
        row = {"observations": n, "kb": len(raw) / 1024, "reps": reps, "p50": pct(times, 50), "p99": pct(times, 99),
               "loads_p50": pct(loads, 50), "orjson_p50": pct(oj, 50)}
        row["ratio"] = row["p50"] / row["loads_p50"]
        rows.append(row)
        print(f"{n:>6} {row['kb']:>7.0f} {reps:>5} {row['p50']:>8.2f} {row['p99']:>8.2f} {row['loads_p50']:>15.2f} "
              f"{row['orjson_p50']:>11.2f} {row['ratio']:>10.2f}")
    return rows


# ------------------------------------------------------------------ 2. HTTP under gunicorn
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], port: int, probe_path: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "CDS_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("POST", probe_path, body=b"{}", headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def start_gunicorn(app_spec: str, workers: int = 2, threads: int = 4,
                   env_extra: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "cds_service" / "gunicorn_conf.py"),
           "-w", str(workers), "--threads", str(threads), "-b", f"127.0.0.1:{port}", app_spec]
    return start_server(cmd, port, "/cds-services/mg-order-select", env_extra), port


def server_cpu_seconds(master_pid: int) -> float | None:
    """CPU time (user + system) of a server's master and worker processes, from /proc
    (Linux; None elsewhere). Per request, it is less sensitive than req/s to the load
    generator sharing the machine."""
    try:
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry.name) == master_pid or int(fields[1]) == master_pid:
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def healthchain_python() -> str | None:
    """A Python with HealthChain installed: HEALTHCHAIN_PYTHON, else this one if it has it."""
    candidate = os.environ.get("HEALTHCHAIN_PYTHON") or sys.executable
    ok = subprocess.run([candidate, "-c", "import healthchain"], capture_output=True).returncode == 0
    return candidate if ok else None


def _client_worker(port: int, calls: list[tuple[str, bytes]], threads: int, deadline: float, max_requests: int,
                   out: mp.Queue) -> None:
    """Keep-alive clients cycling through (path, body) pairs until the deadline or the request cap."""
    lock = threading.Lock()
    state = {"count": 0}
    results: list[tuple[float, int]] = []

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.time() < deadline:
            with lock:
                if state["count"] >= max_requests:
                    return
                n = state["count"]
                state["count"] += 1
            path, body = calls[n % len(calls)]
            t = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except OSError:
                status = 599
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            results.append(((time.perf_counter() - t) * 1000, status))
    pool = [threading.Thread(target=run) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    out.put(results)


def load(port: int, calls: list[tuple[str, bytes]], concurrency: int, seconds: float = 8.0,
         max_requests: int = 20_000) -> dict:
    procs = min(4, concurrency)
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    queue: mp.Queue = mp.Queue()
    start = time.time()
    deadline = start + seconds
    workers = [mp.Process(target=_client_worker, args=(port, calls, n, deadline, max_requests // procs, queue))
               for n in per]
    for w in workers:
        w.start()
    results = [r for _ in workers for r in queue.get()]
    for w in workers:
        w.join()
    elapsed = time.time() - start
    lat = [r[0] for r in results]
    return {"requests": len(results), "rps": len(results) / elapsed, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "latencies": lat,
            "errors": sum(1 for r in results if r[1] >= 500), "seconds": elapsed,
            "statuses": sorted({r[1] for r in results})}


ROUNDS = 5          # interleaved rounds per concurrency: this shared machine drifts by 10-40% within minutes
ROUND_SECONDS = 3.0


def over_http() -> list[dict]:
    """All servers run side by side (idle ones cost nothing); for each concurrency every app
    is loaded in turn, ROUNDS times, so that machine drift hits all apps alike. Throughput is
    the median over rounds, latency percentiles pool the rounds, and the ratio to the no-op
    endpoint is the median of the per-round ratios."""
    body = body_bytes(300)
    path = "/cds-services/mg-order-select"
    apps = [("mg-cds", "benchmarks.apps:mg_app()", {}),
            ("mg-cds, validation cache off", "benchmarks.apps:mg_app()", {"CDS_VALIDATION_CACHE": "0"}),
            ("no-op Flask (json only)", "benchmarks.apps:noop_app()", {}),
            ("Flask + fhir.resources validation", "benchmarks.apps:validating_app()", {"CDS_VALIDATION_CACHE": "0"})]
    servers: list[tuple[str, subprocess.Popen, int, str]] = []
    rows: list[dict] = []
    try:
        for label, spec, env in apps:
            proc, port = start_gunicorn(spec, env_extra=env)
            servers.append((label, proc, port, path))
        python = healthchain_python()
        if python is None:
            print("HealthChain: not installed (optional: set HEALTHCHAIN_PYTHON to a Python with healthchain)")
        else:
            port = free_port()
            hc_path = "/cds/cds-services/mg-order-select"
            proc = start_server([python, "-m", "uvicorn", "benchmarks.healthchain_app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "2", "--log-level", "warning"], port, hc_path)
            servers.append(("HealthChain one-card service (uvicorn x2)", proc, port, hc_path))
        print(f"\n## 2. HTTP, 300-resource order-select: gunicorn gthread 2 workers x 4 threads, GC frozen after "
              f"app load; {ROUNDS} interleaved rounds of {ROUND_SECONDS:g} s per app and concurrency")
        print(f"{'app':<42} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'5xx':>5} "
              f"{'vs no-op':>9} {'server CPU':>12}")
        print(f"{'':<42} {'':>7} {'':>8} {'':>8} {'':>8} {'':>8} {'':>5} {'':>9} {'ms/request':>12}")
        for clients in (1, 8, 32):
            runs: dict[str, list[dict]] = {label: [] for label, *_ in servers}
            for _label, _, port, app_path in servers:
                load(port, [(app_path, body)], clients, seconds=1.0, max_requests=100)  # warm-up
            for _ in range(ROUNDS):
                for label, proc, port, app_path in servers:
                    cpu_before = server_cpu_seconds(proc.pid)
                    run = load(port, [(app_path, body)], clients, seconds=ROUND_SECONDS)
                    cpu_after = server_cpu_seconds(proc.pid)
                    if cpu_before is not None and cpu_after is not None and run["requests"]:
                        run["cpu_ms"] = (cpu_after - cpu_before) * 1000 / run["requests"]
                    runs[label].append(run)
            noop = runs["no-op Flask (json only)"]
            for label, results in runs.items():
                lat = [x for r in results for x in r["latencies"]]
                ratio = median([r["rps"] / n["rps"] for r, n in zip(results, noop)])
                row = {"app": label, "clients": clients, "requests": sum(r["requests"] for r in results),
                       "rps": median([r["rps"] for r in results]), "rps_rounds": [r["rps"] for r in results],
                       "p50": pct(lat, 50), "p99": pct(lat, 99), "errors": sum(r["errors"] for r in results),
                       "vs_noop": ratio}
                cpu = [r["cpu_ms"] for r in results if "cpu_ms" in r]
                row["cpu_ms"] = median(cpu) if len(cpu) == len(results) else None
                rows.append(row)
                cpu_text = f"{row['cpu_ms']:>12.2f}" if row["cpu_ms"] is not None else f"{'n/a':>12}"
                print(f"{label:<42} {clients:>7} {row['requests']:>8} {row['rps']:>8.1f} {row['p50']:>8.2f} "
                      f"{row['p99']:>8.2f} {row['errors']:>5} {ratio:>8.0%} {cpu_text}")
    finally:
        for _, proc, _, _ in servers:
            proc.terminate()
            proc.wait(timeout=10)
    return rows


def median(values: list[float]) -> float:
    return pct(values, 50)


# ------------------------------------------------------------------ 3. fallback fetch
def fallback_fetch() -> dict:
    from cds_service import create_app
    from tests.fault_fhir import resources_from_prefetch, serve_in_process
    request = order_select_request(300)
    bases: mp.Queue = mp.Queue()
    server = mp.Process(target=serve_in_process, args=(resources_from_prefetch(request["prefetch"]), 0.020, bases),
                        daemon=True)
    server.start()
    base = bases.get()
    request["prefetch"] = {}
    request["fhirServer"] = base
    request["fhirAuthorization"] = {"access_token": "bench", "token_type": "Bearer", "expires_in": 300,
                                    "scope": "patient/*.read", "subject": "bench"}
    app = create_app({**BENCH_CONFIG, "CDS_ALLOWED_FHIR_SERVERS": base})  # a local server: allowlisted (egress.py)
    client = app.test_client()
    times = []
    for i in range(53):
        t = time.perf_counter()
        resp = client.post("/cds-services/mg-order-select", json=request)
        if i >= 3:  # the first calls open the pooled connections
            times.append((time.perf_counter() - t) * 1000)
        assert resp.status_code == 200, resp.get_json()
    server.terminate()
    queries = 7
    row = {"queries": queries, "latency_each_ms": 20, "sum_ms": queries * 20,
           "p50": pct(times, 50), "p99": pct(times, 99)}
    print("\n## 3. Fallback fetch: no prefetch, 7 FHIR queries to a local server answering after 20 ms each")
    print(f"sequential sum would be {row['sum_ms']:.0f} ms; measured p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms "
          "(queries concurrent, connections pooled)")
    return row


# ------------------------------------------------------------------ 4. memory
def _rss_child(out: mp.Queue) -> None:
    from cds_service import create_app
    app = create_app(BENCH_CONFIG)
    client = app.test_client()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    raw = body_bytes(10_000)
    for _ in range(3):
        assert client.post("/cds-services/mg-order-select", data=raw, content_type="application/json").status_code == 200
    out.put((before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(raw) / 1e6))


def memory() -> dict:
    queue: mp.Queue = mp.Queue()
    p = mp.Process(target=_rss_child, args=(queue,))
    p.start()
    before, peak, mb = queue.get()
    p.join()
    print("\n## 4. Memory: one worker process, 10,000-Observation request")
    print(f"RSS after start-up {before:.0f} MB; peak while serving a {mb:.1f} MB request 3 times: {peak:.0f} MB")
    return {"startup_mb": before, "peak_mb": peak, "body_mb": mb}


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    xs = [r["observations"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [r["p50"] for r in rows], "o-", label="mg-cds p50")
    ax.plot(xs, [r["p99"] for r in rows], "s--", label="mg-cds p99")
    ax.plot(xs, [r["loads_p50"] for r in rows], "^-", label="json.loads p50 (same body)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Observations in prefetch (+200 MedicationRequests)")
    ax.set_ylabel("ms")
    ax.set_title("mg-cds in-process order-select latency vs prefetch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def plot_path(argv: list[str]) -> Path:
    """``--plot PATH`` (e.g. benchmarks/latency.png to update the committed figure), else a file in
    the temporary directory: a run does not rewrite tracked files unless asked."""
    if "--plot" in argv:
        return Path(argv[argv.index("--plot") + 1])
    return Path(tempfile.gettempdir()) / "mg-cds-bench" / "latency.png"


def main() -> None:
    print(f"# mg-cds benchmarks: {time.strftime('%Y-%m-%d')}, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    rows = in_process()
    plot(rows, plot_path(sys.argv[1:]))
    fallback_fetch()
    memory()
    if "--no-http" not in sys.argv:
        over_http()


if __name__ == "__main__":
    main()
