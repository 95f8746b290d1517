"""gunicorn settings for mg-cds (used by ``mg-cds serve`` and Docker).

GC: Python's cyclic collector dominated the p99 of a JSON-in/JSON-out Flask
app on this hardware. After the app is loaded in each worker, everything
alive is moved out of the collector's view (gc.freeze) and generation 0 is
collected less often; request garbage is still freed by reference counting.
The hook is post_worker_init, not post_fork: without preload_app a worker
loads the app after post_fork, and the app's long-lived objects (knowledge,
FHIR models) must be frozen too.

Memory: glibc keeps 16 MiB of padding at the heap top (cds_service.malloc), set
here in the master so that every forked worker has it."""
import gc
import logging
import os

from cds_service import logs
from cds_service.malloc import pad_heap_top

worker_class = "gthread"
accesslog = None  # the app logs each request as a JSON line
graceful_timeout = 10
keepalive = 5
HEAP_TOP_PADDED = pad_heap_top()


def post_worker_init(worker):
    gc.collect()
    gc.freeze()
    gen0 = int(os.environ.get("CDS_GC_GEN0", "50000"))
    gc.set_threshold(gen0, 50, 100)
    logs.log(logging.INFO, "worker_ready", pid=os.getpid(), gc_frozen_objects=gc.get_freeze_count(), gc_gen0=gen0,
             malloc_top_pad=HEAP_TOP_PADDED)
