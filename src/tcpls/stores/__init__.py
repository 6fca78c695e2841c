"""Shared storage backends for tickets and 0-RTT anti-replay (adapters; the engine never imports them)."""
