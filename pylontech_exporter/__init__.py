"""Typed, read-only library and Prometheus exporter for Pylontech low-voltage batteries."""

__version__ = "0.1.0"
