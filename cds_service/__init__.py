"""mg-cds protocol layer: a CDS Hooks 2.0 server that knows nothing about MG."""
from .app import create_app

__all__ = ["create_app"]
