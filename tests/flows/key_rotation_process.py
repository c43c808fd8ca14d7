"""security-key-compromise in a process of its own, as a worker runs it (used by test_security_key_compromise.py,
which kills it mid-run).

``python -m tests.flows.key_rotation_process ENVIRONMENT KEY_ID INCIDENT`` runs the flow against the Prefect API in
PREFECT_API_URL.
"""

from __future__ import annotations

import asyncio
import sys

from flows.security_key_compromise import security_key_compromise

if __name__ == "__main__":
    environment, key_id, incident = sys.argv[1:4]
    asyncio.run(security_key_compromise(key_id=key_id, environment=environment, incident=incident))
