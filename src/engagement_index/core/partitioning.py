"""The canonical partition of a contact key: murmur2, as Kafka's Java client partitions keys.

Every scoring source is co-partitioned, and a contact's state lives on partition
``canonical_partition(key, scoring_partitions)`` of the worker's tables, whatever partition
its records arrived on: producers disagree (Java clients, aiokafka and kafka-python use
murmur2; librdkafka-based clients such as kcat and confluent-kafka default to CRC32), so the
arrival partition is no proof of a contact's home. See ``docs/topology.md``.
"""

from __future__ import annotations

import functools

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """32-bit MurmurHash2 of ``data`` with Kafka's seed (``Utils.murmur2`` of the Java client)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=1 << 16)
def canonical_partition(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: ``(murmur2(key) & 0x7fffffff) % n``."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
