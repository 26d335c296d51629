"""The RS232 console source: the ``pylon>`` text shell of Pylontech (and compatible)
batteries, for stacks whose RS485 port the inverter holds.

Layers: :mod:`.shell` (the client: read-only allow-list, one command in flight, answers
framed at ``$$`` and the prompt), :mod:`.tables` (header-driven parsers of every layout),
:mod:`.reader` (the read plan, a :class:`~pylontech_exporter.worker.Source`),
:mod:`.scan` (``pylontech-exporter scan`` on a console port). Facts about the firmware:
docs/console.md.
"""
