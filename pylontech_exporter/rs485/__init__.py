"""The Pylontech low-voltage RS485 protocol (V3.3): frames, payloads, the command table,
the client (transaction layer) and the exporter's read plan."""
