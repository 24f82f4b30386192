"""An independent reference implementation of ``docs/scoring.md`` and ``docs/models.md``, used
as a test oracle.

It imports nothing from ``engagement_index``: it is written from the documents alone, so a
mistake in the core's math or lifecycle is not repeated here. ``engagement`` is the two-halves
lifecycle of docs/scoring.md (with duplicates); ``lifecycles`` the declarative lifecycles of
docs/models.md (format 2 models, and format 1 through the documented conversion).
"""
