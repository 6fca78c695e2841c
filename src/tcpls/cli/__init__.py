"""The ``tcpls`` command line interface."""

from .__main__ import main

__all__ = ["main"]
