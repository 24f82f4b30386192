"""An independent reference implementation of ``docs/scoring.md``, used as a test oracle.

It imports nothing from ``engagement_index``: it is written from the document alone, so a
mistake in the core's math or lifecycle is not repeated here.
"""
