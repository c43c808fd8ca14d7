"""What ``deploy-and-validate`` and ``rollback-release`` orchestrate (the seed's Pre-Deployment Checklist,
Production Deployment, Post-Deployment Validation and Rollback Procedure):

- ``policy``: ``policy.yaml``, read at each run (preflight limits, fail-fast rules, load, gates, approval)
- ``rollout``: a release of several Deployments as one unit: captured, followed, rolled back together
- ``gates``: every check as value / threshold / verdict (pass, fail, inconclusive: no data is never a pass)
- ``load``: an open-loop load with latency percentiles and error rate
"""
