"""The high-memory runbook's policy and planning (flows/high_memory.py)."""
