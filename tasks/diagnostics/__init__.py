"""Diagnostics of the data stores (the seed's "Redis Operations / Monitoring"): read-only, bounded reads and the
verdicts on them, with their policy (``policy.yaml``)."""
