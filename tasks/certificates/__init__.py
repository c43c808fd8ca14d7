"""Certificates (``flows/certificates.py``: ``certificate-check`` and ``renew-certificate``, and step 8 of
``weekly-maintenance``): the expiry read three ways and compared (:mod:`tasks.certificates.check`), who is told
(:mod:`tasks.certificates.notify`), the renewal's steps (:mod:`tasks.certificates.renewal`), and the policy with
every threshold (:mod:`tasks.certificates.policy`, ``policy.yaml``)."""
