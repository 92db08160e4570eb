"""Service mode (``moerules serve``): partners push payloads over HTTP, the service keeps each
one durable before answering 2xx, and delivers from the spool through the same runtime as
``moerules run`` (engine/runtime: loop, sender, ledger, rate limits, retries, dead letters).

::

    partner ──POST /ingest/{bundle}──► app ──► auth ─► limits ─► source shape ─► Spool.put ─► 2xx
                                                                                    │
    partner API ◄── Sender ◄── Pipeline ◄── BundleConsumer (DeliveryLoop) ◄── claim ┘
                                                  └──► ack once every item is final

Layers, one module each: ``spool`` (the Spool interface and its SQLite implementation),
``auth`` (credentials per route from the environment), ``metrics`` (Prometheus),
``consumer`` (delivery from the spool), ``reload`` (bundles swapped only when valid),
``logs`` (JSON lines, human-readable on a terminal), ``app`` (the starlette routes) and
``server`` (uvicorn, signals, graceful stop).
"""
