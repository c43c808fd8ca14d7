"""The runbook catalogue's one shape: findings → planned actions → decide (auto / approve / observe) → apply with an
idempotency key in shared storage and an event per action → temporary actions recorded with their reversal and
expiry (reverted by the ``revert-temporary-actions`` flow) → verify → report (:mod:`tasks.catalogue.shape`)."""
