"""Deployments: ``prefect.yaml`` is the single source; this package applies it (work pool, then every
deployment) and reads back what the server has."""
