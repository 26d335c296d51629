"""The real console recordings of ../shared/console (read from there, never copied into
the repository) and helpers for tests of the console source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import REPO

CONSOLE = REPO.parent / "shared" / "console"
TRANSCRIPTS = CONSOLE / "transcripts.json"


def transcript_bytes(record: dict[str, Any]) -> bytes:
    """The device's bytes of a record: ``transcripts/<id>.raw``, or the record's
    ``raw_device_only`` where the stored file carries annotation lines."""
    if "raw_device_only" in record:
        return record["raw_device_only"].encode("latin-1")
    return Path(CONSOLE / "transcripts" / f"{record['id']}.raw").read_bytes()
