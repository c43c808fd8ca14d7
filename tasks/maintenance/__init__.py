"""The weekly maintenance (``flows/maintenance.py``): the steps (:mod:`tasks.maintenance.checks`), how each runs
and what it reports (:mod:`tasks.maintenance.steps`), the policy with every threshold
(:mod:`tasks.maintenance.policy`, ``policy.yaml``) and the report, its figures kept week to week, Slack and the
event (:mod:`tasks.maintenance.report`)."""
