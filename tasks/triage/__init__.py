"""What the incident-triage runbook calls: enrichers (diagnose), mitigations (plan, decide, apply), the policy
(severity, escalation, thresholds), Slack rendering, escalation and the post-mortem."""
