"""The pure scoring core: events, decay math, index, lifecycle stage machine, model loading.

Nothing here imports Kafka, Faust, RocksDB or Prometheus, and nothing reads the clock:
time is always an argument. The lint configuration enforces both rules.
"""
