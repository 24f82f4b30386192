"""Settings shared by every test tier."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# the broker fixtures (real local Kafka) for tests/integration and tests/reliability
pytest_plugins = ["tests.kafka_harness"]

settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=False, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
