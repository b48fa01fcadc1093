"""``python -m edge_ser`` is the ``edge-ser`` command."""

from edge_ser.cli import run

run()
