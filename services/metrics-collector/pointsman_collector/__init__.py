"""Pointsman metrics-collector: discovers engine endpoints, scrapes their Prometheus metrics on a
short interval and publishes one compact :class:`~pointsman.v1.PoolSnapshot` per pool on NATS.

Replicas split the endpoints between them (rendezvous hashing over the live replicas announced on
a heartbeat subject), so the fleet a picker sees can be far larger than one process can scrape.
"""
