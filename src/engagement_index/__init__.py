"""Engagement Index: real-time engagement scores and lifecycle stages per contact."""

__version__ = "0.1.0"
