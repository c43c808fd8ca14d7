"""The alert gateway: Alertmanager, Grafana and generic JSON alerts in; deduplicated incidents and Prefect events
out. It answers 202 as soon as an alert is durably stored, and never loses an accepted alert: events wait in a
SQLite outbox until the Prefect server takes them."""
