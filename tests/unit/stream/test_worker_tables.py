"""The worker's RocksDB tables take their memory limits from the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from engagement_index.core.model import load_model
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.app import Worker
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
