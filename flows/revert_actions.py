"""revert-temporary-actions: the catalogue's temporary actions (IP blocks, throttles, fallbacks, weights, endpoint
switches, timeouts raised, breakers opened) undone at their expiry, by a scheduled run rather than the platform's
own TTL alone, and the platform read back afterwards.

Each run takes the actions due from the environment's Redis (``runbooks:temporary``, ordered by expiry; one worker
takes each), runs the reversal recorded with it, re-reads the platform and records ``reverted`` (gone from
``runbooks actions``) or ``revert-failed`` (kept, tried again by the next run; the run fails). An event per
reversal (``runbooks.action.reverted`` / ``runbooks.action.revert-failed``), a table artifact
``revert-temporary-actions-<kind>`` when it reverted anything.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from blocks.environment import load_environment
from kernel.redact import redact_errors
from tasks.catalogue.shape import action_rows, revert_due
from tasks.reporting import publish_table


@flow(name="revert-temporary-actions", log_prints=False)
@redact_errors
async def revert_temporary_actions(environment: str = "sandbox") -> State:
    """Revert every temporary action of ``environment`` whose expiry has passed, and check the platform."""
    env = await load_environment(environment)
    records = await revert_due(env)
    logger = get_run_logger()
    for r in records:
        logger.info("%s %s %s (%s): %s", r.outcome, r.kind, r.target, r.runbook, r.detail)
    if records:
        await publish_table(
            f"revert-temporary-actions-{env.kind}", action_rows(records), description="temporary actions reverted"
        )
    failures = [r for r in records if r.outcome != "reverted"]
    message = f"{len(records) - len(failures)} reverted, {len(failures)} failed (tried again next run)"
    if failures:
        return Failed(message=message, data=records)
    return Completed(message=message, data=records)
