"""The one exception root of the project and its small subclasses."""

from __future__ import annotations


class EngagementIndexError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(EngagementIndexError):
    """A settings value, model file or topology file is invalid."""


class ModelError(ConfigError):
    """A scoring model file is invalid; the message names the offending field."""


class TopologyError(ConfigError):
    """The stream topology declaration is invalid or does not match the cluster."""


class EventRejected(EngagementIndexError):
    """An inbound record cannot be scored.

    ``failure`` is one of the fixed failure types in
    ``engagement_index.core.events.FailureType``; ``message`` says why in plain words.
    """

    def __init__(self, failure: str, message: str) -> None:
        super().__init__(f"{failure}: {message}")
        self.failure = failure
        self.message = message


class BrokerError(EngagementIndexError):
    """Kafka could not be reached or refused the request."""


class StateDecodeError(EngagementIndexError):
    """A stored contact state or contact key cannot be decoded."""


class IdentityRecordError(EngagementIndexError):
    """A record of the identity merge protocol cannot be read (``stream/identity.py``)."""


class BatchWriteError(BrokerError):
    """A batch's outputs or changelog records were not acknowledged: the batch is retried.

    ``step`` is ``outputs`` or ``changelog``. Nothing of the batch is committed past it.
    """

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step} not acknowledged by the broker: {cause!r}")
        self.step = step
