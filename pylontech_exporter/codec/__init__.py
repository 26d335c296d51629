"""Bytes <-> frames <-> typed readings. No I/O here."""
