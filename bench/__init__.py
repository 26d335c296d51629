"""Benchmarks of pylontech-exporter: what a user's Prometheus gets, against the wire limit
and the peer libraries, and a soak with hostile clients.

Run ``python -m bench`` (``--quick`` for the small form the smoke test runs, ``--only``
for some sections); see docs/benchmarks.md. Not part of the test suite's pass/fail.
"""
