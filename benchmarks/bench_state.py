"""Benchmark: building a PatientState from 100, 1,000 and 10,000 Observations
+ 200 MedicationRequests, decoded as the service decodes them (Observations and
Conditions typed), against json.loads of the same payload.
Prints a table; it is a measurement, not a test. Run: python benchmarks/bench_state.py"""
from __future__ import annotations

import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.payloads import NOW, PID, body_bytes  # noqa: E402
from cds_service.decode import decode_body  # noqa: E402
from cds_service.pool import ResourcePool  # noqa: E402
from hooks.builder import build_state  # noqa: E402
from hooks.knowledge import load  # noqa: E402
from hooks.services import SERVICES  # noqa: E402


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    load()
    build_state(ResourcePool(), PID, NOW)  # warm imports and regexes
    print(f"# PatientState build vs json.loads ({platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()})")
    print(f"{'observations':>12} {'bytes':>10} {'json.loads ms':>14} {'state ms':>10} {'ratio':>6}")
    for n in (100, 1_000, 10_000):
        raw = body_bytes(n)
        repeat = 200 if n <= 1000 else 30
        loads = statistics.median(timed(lambda raw=raw: json.loads(raw), repeat))
        body = decode_body(raw, SERVICES[0].decoder)  # as the service reads it: Observations typed

        def build(body=body):
            pool = ResourcePool()
            pool.add_all(body["prefetch"].items())
            build_state(pool, PID, NOW, drafts=[e["resource"] for e in body["context"]["draftOrders"]["entry"]])
        gc.collect()
        state_ms = statistics.median(timed(build, repeat))
        print(f"{n:>12} {len(raw):>10} {loads:>14.2f} {state_ms:>10.2f} {state_ms / loads:>6.2f}")


if __name__ == "__main__":
    main()
