"""The disaster-recovery runbook's parts (``disaster-recovery`` and ``dr-drill``, :mod:`flows.disaster_recovery`).

* :mod:`tasks.dr.policy`: objectives, timeouts, what is switched (``policy.yaml``);
* :mod:`tasks.dr.manifests`: a backup's Kubernetes objects rewritten for the recovery namespace, in Velero's order;
* :mod:`tasks.dr.plan`: the preflight (what the backup holds, what exists in the target, what will be done);
* :mod:`tasks.dr.data`: PostgreSQL and Redis into the recovery servers, and their checks;
* :mod:`tasks.dr.recovery`: one recovery, restore and verify, with its phases timed;
* :mod:`tasks.dr.report`: the report, the ``dr.*`` events, the drill's week-over-week table.
"""
