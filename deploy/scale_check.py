"""Two gunicorn instances (two replicas on one machine) on one database, SQLite
file vs PostgreSQL, same machine, same run:

* load: 32 keep-alive clients (16 per instance) on the mixed card requests of
  reliability/run.py, in interleaved rounds so that machine drift hits both alike;
* durability: 8 clients POST feedback to both instances while one worker of the
  first instance is SIGKILLed; every acknowledged (2xx) row must be stored;
* replay: one JWT sent to both instances (JWT mode) is accepted once.

Run: .venv/bin/python deploy/scale_check.py [--seconds 8] [--rounds 3]
Needs Debian's postgresql package (a throwaway cluster is made, as in tests/test_postgres.py).
Prints markdown tables."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import load, pct, start_gunicorn  # noqa: E402
from reliability.run import mixed_calls, workers_of  # noqa: E402
from tests.test_postgres import PostgresServer, replay_across_instances  # noqa: E402

APP = "benchmarks.apps:mg_app()"


def instances(url: str, count: int = 2) -> list[tuple]:
    return [start_gunicorn(APP, env_extra={"CDS_DATABASE_URL": url, "CDS_LOG_LEVEL": "WARNING"}) for _ in range(count)]


def stop(servers: list[tuple]) -> None:
    for proc, _ in servers:
        proc.terminate()
    for proc, _ in servers:
        proc.wait(timeout=15)


def load_both(servers: list[tuple], clients: int, seconds: float) -> dict:
    results: list[dict] = []
    threads = [threading.Thread(target=lambda p=port: results.append(
        load(p, mixed_calls(), clients // len(servers), seconds=seconds, max_requests=10**6)))
        for _, port in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = [x for r in results for x in r["latencies"]]
    return {"requests": len(latencies), "rps": sum(r["rps"] for r in results), "latencies": latencies,
            "errors": sum(r["errors"] for r in results)}


def durability(servers: list[tuple], count_stored, seconds: float = 12.0, kill_after: float = 4.0,
               clients: int = 8) -> dict:
    acknowledged: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()
    deadline = time.time() + seconds

    def client(i: int) -> None:
        session = requests.Session()
        url = f"http://127.0.0.1:{servers[i % len(servers)][1]}/cds-services/mg-order-select/feedback"
        while time.time() < deadline:
            card = str(uuid.uuid4())
            item = {"card": card, "outcome": "accepted", "outcomeTimestamp": "2026-11-25T12:00:00Z"}
            try:
                ok = session.post(url, json={"feedback": [item]}, timeout=10).ok
            except requests.RequestException:
                ok = False
            with lock:
                (acknowledged if ok else failed).append(card)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(kill_after)
    victims = workers_of(servers[0][0].pid)[:1]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join()
    stored = count_stored()
    missing = [c for c in acknowledged if c not in stored]
    return {"acknowledged": len(acknowledged), "failed": len(failed), "stored": len(stored), "missing": len(missing),
            "killed": len(victims)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="per load round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from sqlalchemy import create_engine, text

    from cds_service.storage import new_engine
    pg = PostgresServer()
    pg.start()
    tmp = Path(tempfile.mkdtemp(prefix="mgcds-scale-"))
    backends = {"SQLite file": f"sqlite:///{tmp}/shared.sqlite3", "PostgreSQL": pg.new_database()}
    print(f"# Two gunicorn instances (2 workers x 4 threads each) on one database; {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    try:
        servers = {name: instances(url) for name, url in backends.items()}
        rows: dict[str, list[dict]] = {name: [] for name in backends}
        for _ in range(args.rounds):
            for name in backends:
                rows[name].append(load_both(servers[name], 32, args.seconds))
        print(f"\n## Load: 32 clients (16 per instance), {args.rounds} interleaved rounds of {args.seconds:.0f} s\n")
        print("| database | requests | req/s (median round) | p50 ms | p99 ms | 5xx |\n|---|---:|---:|---:|---:|---:|")
        for name, rs in rows.items():
            rps = sorted(r["rps"] for r in rs)[len(rs) // 2]
            pooled = [x for r in rs for x in r["latencies"]]
            print(f"| {name} | {len(pooled)} | {rps:.1f} | {pct(pooled, 50):.1f} | {pct(pooled, 99):.1f} | "
                  f"{sum(r['errors'] for r in rs)} |")
        print(f"\n(percentiles pool the rounds; load average at the end: {os.getloadavg()[0]:.1f})"
              "\n\n## Durability: 8 clients POST feedback to both instances for 12 s; "
              "one worker of the first is SIGKILLed at 4 s\n")
        print("| database | acknowledged (2xx) | failed during kill | stored rows | acknowledged but missing |"
              "\n|---|---:|---:|---:|---:|")
        for name, url in backends.items():
            engine = new_engine(url) if name == "PostgreSQL" else create_engine(url)

            def stored(engine=engine) -> set[str]:
                with engine.connect() as conn:
                    return {r[0] for r in conn.execute(text("SELECT card_uuid FROM feedback"))}
            before = len(stored())
            d = durability(servers[name], stored)
            print(f"| {name} | {d['acknowledged']} | {d['failed']} | {d['stored'] - before} | {d['missing']} |")
            engine.dispose()
        for group in servers.values():
            stop(group)
        print("\n## Replay across instances: one JWT to instance A, then B, then A again (JWT mode)\n")
        print("| database | A | B | A again |\n|---|---:|---:|---:|")
        for name, url in backends.items():
            print(f"| {name} | " + " | ".join(str(s) for s in replay_across_instances(url, tmp)) + " |")
    finally:
        pg.remove()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
