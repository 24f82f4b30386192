"""The worker's RocksDB tables: memory limits from the settings, Faust's store with BulkStore's
rebalance."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from engagement_index.core.model import load_model
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.app import Worker
from engagement_index.stream.bulk import BulkStore
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]


def test_tables_use_the_configured_memtable_and_block_cache_sizes(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        rocksdb_write_buffer_bytes=5 * 2**20,
        rocksdb_block_cache_bytes=3 * 2**20,
    )
    worker = Worker(
        settings,
        load_topology(ROOT / "streams" / "topology.yaml"),
        load_model(ROOT / "config" / "models" / "default.yaml"),
        Metrics(CollectorRegistry()),
    )
    for table in (worker.contacts, worker.history):
        store: Any = table.data
        options = store.rocksdb_options
        assert options.write_buffer_size == 5 * 2**20
        assert options.block_cache_size == 3 * 2**20


def test_a_rebalance_collects_garbage_only_if_it_closed_a_database_of_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(
        Settings(data_dir=tmp_path),
        load_topology(ROOT / "streams" / "topology.yaml"),
        load_model(ROOT / "config" / "models" / "default.yaml"),
        Metrics(CollectorRegistry()),
    )
    store: Any = worker.contacts.data
    assert isinstance(store, BulkStore)
    collections: list[int] = []

    def collect() -> int:
        collections.append(1)
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    contacts = TP(worker.topology.changelog_topic("contacts"), 0)
    history = TP(worker.topology.changelog_topic("history"), 0)
    store._dbs[0] = object()  # an open database of partition 0
    store.revoke_partitions(worker.contacts, set())
    store.revoke_partitions(worker.contacts, {history, TP(contacts.topic, 1)})
    assert collections == []
    assert 0 in store._dbs
    store.revoke_partitions(worker.contacts, {contacts, history})
    assert 0 not in store._dbs
    assert collections == [1]
