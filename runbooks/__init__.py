"""Runbook automation for the AI multi-model API platform, on Prefect."""

__version__ = "0.1.0"
