"""Offline reports computed from an event log by the replay (docs/reports.md).

* :mod:`~engagement_index.reports.cohorts`: the index by days since a cohort event, per monthly
  cohort (``engagement-index report cohorts``);
* :mod:`~engagement_index.reports.compare`: how a model change moves contacts
  (``engagement-index report compare``);
* :mod:`~engagement_index.reports.render`: the CSV, PNG and HTML files of both.

The numbers come from :class:`engagement_index.replay.Replayer` and the pure core, so they are
those the streaming worker would have reported for the same events in the same order.
"""
