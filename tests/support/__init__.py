"""Helpers shared by the tests (no tests here): the exporter as a process or in-process,
scraping and the expected samples, stacks, fakes, rule and dashboard helpers, a real
Prometheus."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
