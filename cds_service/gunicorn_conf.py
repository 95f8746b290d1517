"""gunicorn settings for mg-cds (used by ``mg-cds serve`` and Docker).

GC: Python's cyclic collector dominated the p99 of a JSON-in/JSON-out Flask
app on this hardware. After the app is loaded in each worker, everything
alive is moved out of the collector's view (gc.freeze) and generation 0 is
collected less often; request garbage is still freed by reference counting."""
import gc
import os

worker_class = "gthread"
accesslog = None  # the app logs each request as a JSON line
graceful_timeout = 10
keepalive = 5


def post_fork(server, worker):
    gc.collect()
    gc.freeze()
    gc.set_threshold(int(os.environ.get("CDS_GC_GEN0", "50000")), 50, 100)
