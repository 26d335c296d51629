"""Benchmarks of pylontech-exporter against the wire limit and the peer libraries.

Run ``python -m bench`` (``--quick`` for a short run); see docs/benchmarks.md. Not part of
the test suite's pass/fail.
"""
