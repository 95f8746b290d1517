"""The long reliability checks (``make reliability``): fuzzing at volume,
load, soak with RSS sampling, and feedback durability while a worker is
SIGKILLed. Everything targets 127.0.0.1 and is bounded in requests and time.
Prints markdown tables for docs/RELIABILITY.md and exits 1 when any check
failed (a failing fuzz test, a 5xx under load or soak, a lost acknowledged row)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import load, start_gunicorn  # noqa: E402

SCENARIOS = ROOT / "fixtures" / "scenarios"
MIXED = ["ivig-dose-too-high", "rituximab-no-screening", "sign-ivig-with-plex", "pv-crisis-grade4", "macrolide-grade3",
         "synthea-with-mg-grade3", "unrelated-order", "pv-refractory-after-ivig"]


def mixed_calls() -> list[tuple[str, bytes]]:
    calls = []
    for name in MIXED:
        service = json.loads((SCENARIOS / name / "expected.json").read_text())["service"]
        calls.append((f"/cds-services/{service}", (SCENARIOS / name / "request.json").read_bytes()))
    return calls


def workers_of(master: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fuzz() -> list[str]:
    print("\n## Fuzzing (schemathesis over every operation, hypothesis over the state builder)")
    examples = 1000
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                           "tests/test_fuzz.py"],
                          cwd=ROOT, env={**os.environ, "FUZZ_EXAMPLES": str(examples)}, capture_output=True, text=True)
    tail = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line]
    print(f"| examples per operation | operations | state-builder examples | result | exit | seconds |\n"
          f"|---:|---:|---:|---|---:|---:|\n| up to {examples} | 8 | up to {examples * 5} | "
          f"{tail[-1] if tail else 'no summary'} | {proc.returncode} | {time.time() - started:.0f} |")
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        return [f"fuzzing: pytest exited {proc.returncode} ({tail[-1] if tail else 'no summary'})"]
    return []


def load_test(seconds: int = 60) -> list[str]:
    print(f"\n## Load: 32 concurrent clients, {seconds} s, mixed services (gunicorn 2 workers x 4 threads)")
    proc, port = start_gunicorn("benchmarks.apps:mg_app()")
    try:
        r = load(port, mixed_calls(), 32, seconds=seconds, max_requests=10**6)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("| requests | req/s | p50 ms | p99 ms | 5xx | statuses |\n|---:|---:|---:|---:|---:|---|\n"
          f"| {r['requests']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['statuses']} |")
    return [f"load: {r['errors']} answers were 5xx"] if r["errors"] else []


def soak(total: int = 20_000, step: int = 1_000) -> list[str]:
    print(f"\n## Soak: {total} requests in batches of {step}, worker RSS sampled after each batch")
    proc, port = start_gunicorn("benchmarks.apps:mg_app()")
    samples, errors = [], 0
    try:
        calls = mixed_calls()
        for done in range(step, total + 1, step):
            r = load(port, calls, 8, seconds=120, max_requests=step)
            errors += r["errors"]
            samples.append((done, sum(rss_mb(p) for p in workers_of(proc.pid))))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    xs, ys = [s[0] / 1000 for s in samples], [s[1] for s in samples]
    half = len(xs) // 2
    mx, my = sum(xs[half:]) / len(xs[half:]), sum(ys[half:]) / len(ys[half:])
    slope = sum((x - mx) * (y - my) for x, y in zip(xs[half:], ys[half:])) / sum((x - mx) ** 2 for x in xs[half:])
    print("| after requests | workers' RSS MB |\n|---:|---:|")
    for done, mb in samples[:: max(1, len(samples) // 10)] + [samples[-1]]:
        print(f"| {done} | {mb:.1f} |")
    print(f"\n5xx: {errors}. RSS slope over the second half: {slope:+.2f} MB per 1,000 requests "
          f"(first {ys[0]:.1f} MB, last {ys[-1]:.1f} MB).")
    return [f"soak: {errors} answers were 5xx"] if errors else []


def durability(seconds: float = 12.0, kill_after: float = 4.0, clients: int = 8) -> list[str]:
    print(f"\n## Durability: {clients} clients POST feedback for {seconds:.0f} s; a worker is SIGKILLed at {kill_after:.0f} s")
    db = Path(tempfile.mkdtemp()) / "feedback.sqlite3"
    proc, port = start_gunicorn("benchmarks.apps:mg_app()", env_extra={"CDS_FEEDBACK_DB": str(db)})
    acknowledged: list[str] = []
    failures = {"count": 0}
    lock = threading.Lock()
    deadline = time.time() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.time() < deadline:
            card = str(uuid.uuid4())
            body = json.dumps({"feedback": [{"card": card, "outcome": "overridden",
                                             "outcomeTimestamp": "2026-11-25T12:00:00Z",
                                             "overrideReason": {"reason": {"code": "benefit-outweighs-risk",
                                                                           "system": "urn:mg-cds:override-reason"}}}]})
            try:
                conn.request("POST", "/cds-services/mg-order-select/feedback", body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = 200 <= resp.status < 300
            except OSError:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            with lock:
                if ok:
                    acknowledged.append(card)
                else:
                    failures["count"] += 1
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(kill_after)
    victims = workers_of(proc.pid)[:1]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join()
    proc.terminate()
    proc.wait(timeout=10)
    stored = {row[0] for row in sqlite3.connect(db).execute("SELECT card_uuid FROM feedback")}
    missing = [c for c in acknowledged if c not in stored]
    print("| acknowledged (2xx) | failed during kill | stored rows | acknowledged but missing | workers killed |\n"
          "|---:|---:|---:|---:|---:|\n"
          f"| {len(acknowledged)} | {failures['count']} | {len(stored)} | {len(missing)} | {len(victims)} |")
    return [f"durability: {len(missing)} acknowledged feedback rows are missing"] if missing else []


def main() -> int:
    print(f"# mg-cds reliability run, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs")
    failures = fuzz() + load_test() + soak() + durability()
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
