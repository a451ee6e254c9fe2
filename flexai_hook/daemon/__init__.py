"""flexaid: where a slice is remembered.

Owns: the configuration (config.py), the service logic (service.py), the socket loop and its
limits (server.py, conngate.py, access.py), the ledger and its batches (ledger.py, batch.py,
writer.py), reconciliation and recovery (reconcile.py, recover.py), the service manager glue
(supervisor.py), metrics (metrics.py) and the entry point (main.py).

May import: the top-level request model, devices/, oci/ (the spec edits flexaid makes for the
C front door) and placement/. Nothing imports daemon/ but cli/.
"""
