"""Where features and results live: extraction into the on-disk feature store, the Ray
backend that fills it on a cluster, the result cache, and what the cache folder holds.

- :mod:`.extraction` — hooked forwards, sharded feature files with provenance, layer shapes
- :mod:`.ray_backend` — the same extraction as Ray actors (same files, bit for bit)
- :mod:`.cache` — the checksummed result cache (diskcache) every service request goes through
- :mod:`.cache_usage` — ``python -m core cache info`` / ``prune``: what is live, what is stale
"""
