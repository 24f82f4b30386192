"""The HTTP collector: Segment-compatible tracking API, signed pixel and email webhooks.

Everything it accepts is mapped to the canonical event (or, for identify/alias/group calls,
an identity record) and published to Kafka before the sender gets a 2xx.
"""
