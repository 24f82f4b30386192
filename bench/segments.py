"""Segment lists and counts at scale: 1,000,000 contacts over the partitions of two workers.

    .venv/bin/python bench/segments.py [--contacts N] [--requests N] [--keep]
    make bench-segments [ARGS="..."]

Method (bench/README.md, "Segment queries"):

1. A private broker (``dev/kafka/kafka.sh``, free ports, state under bench/.cache/) and a
   private topology (6 partitions), as ``bench/run.py`` makes them.
2. *State templates*: the offline replay (``engagement_index.replay``) of a few thousand
   synthetic contacts of the default model (cold and engaged profiles over the last ten
   days, buyers of then and of months ago), advanced to now, so every due time lies ahead
   (templates with a change due within two hours are dropped: no wake-up storm in the run).
3. *Seeding*: each of the ``--contacts`` contacts (tenant ``acme``) gets one template's state
   (states do not hold the contact id), written straight into the ``contacts`` table's RocksDB
   partitions of **both** workers' data folders, on the contact's canonical partition. Producing
   a million events and scoring them would take most of an hour on two cores; restoring the
   states from a changelog, minutes. Whichever partitions the group assigns to a worker, their
   states are then in its folder; each worker indexes and serves only the partitions it owns
   (about half each). The changelog topics stay empty, so recovery reads nothing from them.
4. Both workers start; the time until both are ready includes the recovery re-index of the
   due times and the segment index (``recovered: ... re-indexed in`` in each worker's log).
5. ``--requests`` requests per kind, alternating between the workers (each answers for all six
   partitions, asking the other for its three), one at a time over keep-alive connections,
   timed from send to the last byte: a page of 100 for ``stage=purchase`` (the first page, and
   pages following the cursors deeper into the list), a page sorted by ``-index``, the
   ``summary``. p50/p99 nearest rank. The workers get no events during the run.

Writes bench/results/segments.json and appends a row to bench/RESULTS.md (``--no-history``:
not). Targets: p99 < 100 ms for a page, < 250 ms for a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import yaml
from rocksdict import Options, Rdict, WriteBatch

from bench.private_topics import usable_prefix
from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import advance, evaluate
from engagement_index.core.model import load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import encode_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.replay import Replayer
from engagement_index.stream.auth import token_digest
from engagement_index.stream.segment_query import ModelView
from engagement_index.stream.segments import SegmentIndex
from engagement_index.stream.stored import StoredContact

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "bench" / ".cache"
KAFKA_SCRIPT = REPO / "dev" / "kafka" / "kafka.sh"
MODEL = REPO / "config" / "models" / "default.yaml"
ENGINE = [sys.executable, "-m", "engagement_index.cli"]
RESULTS_JSON = REPO / "bench" / "results" / "segments.json"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
TOKEN = "bench-segments-token"
TENANT = "acme"
PARTITIONS = 6
TARGETS = {"page_p99_ms": 100.0, "summary_p99_ms": 250.0}
HOT = ("web.form_submit", "email.click", "social.share", "commerce.cart_add", "web.page_view")
WEAK = ("web.page_view", "email.open", "social.like", "email.open")
MS_PER_DAY = 86_400_000


_T0 = time.monotonic()


def log(message: str) -> None:
    """A progress line with the time since the run started."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(*cmd: str) -> str:
    done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "HEAD"),
        "src_dirty": bool(git("status", "--porcelain", "--", "src")),
        "load_average_at_start": os.getloadavg(),
    }


class Broker:
    """A private broker started with the project's script (as bench/run.py starts one)."""

    def __init__(self, state_dir: Path) -> None:
        self.bootstrap = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": self.bootstrap.rsplit(":", 1)[1],
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_STATE_DIR": str(state_dir),
        }

    def _script(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_SCRIPT), action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def start(self) -> None:
        done = self._script("start")
        if done.returncode != 0:
            raise RuntimeError(f"could not start the broker:\n{done.stdout}\n{done.stderr}")

    def stop(self) -> None:
        self._script("stop")


def private_topology(run_dir: Path, prefix: str) -> Path:
    """streams/topology.yaml with a unique app id and topic names, 6 partitions."""
    raw = yaml.safe_load((REPO / "streams" / "topology.yaml").read_text())
    raw["app_id"] = f"{prefix}-app"
    raw["scoring_partitions"] = PARTITIONS
    for group in raw.values():
        if not isinstance(group, dict):
            continue
        for spec in group.values():
            if isinstance(spec, dict) and "name" in spec:
                spec["name"] = f"{prefix}.{spec['name']}"
    path = run_dir / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Worker:
    """One ``engagement-index worker`` process."""

    def __init__(self, bootstrap: str, topology: Path, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_file = data_dir.with_suffix(".log")
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ENGAGEMENT_INDEX_TOPOLOGY_FILE": str(topology),
            "ENGAGEMENT_INDEX_MODEL_FILE": str(MODEL),
            "ENGAGEMENT_INDEX_DATA_DIR": str(data_dir),
            "ENGAGEMENT_INDEX_WEB_PORT": str(self.port),
            "ENGAGEMENT_INDEX_WEB_HOST": "127.0.0.1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [*ENGINE, "worker"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log_file.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError("a worker exited:\n" + "\n".join(tail))

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def peak_rss(self) -> int | None:
        """The kernel's peak resident set size of the process (VmHWM), in bytes."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(found.group(1)) * 1024 if found else None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- states
def templates(count: int, now_ms: int, seed: int) -> tuple[list[bytes], Counter[str]]:
    """Encoded states of ``count`` synthetic contacts as of ``now_ms`` and their stages."""
    model = load_model(MODEL)
    cm = model.compiled
    rng = random.Random(seed)
    replayer = Replayer(model, until_ms=now_ms)
    for i in range(count):
        cid = f"t-{i}"
        kind = rng.random()
        if kind < 0.45:  # cold: a few weak events over ten days
            stamps = sorted(
                now_ms - rng.randint(0, 10 * MS_PER_DAY) for _ in range(rng.randint(1, 6))
            )
            types = [rng.choice(WEAK) for _ in stamps]
        else:  # engaged: a burst of hot events in the last days (most reach purchase)
            start = now_ms - rng.randint(MS_PER_DAY // 2, 3 * MS_PER_DAY)
            if kind > 0.9:  # a buyer of months ago (exit, mostly)
                start = now_ms - rng.randint(60 * MS_PER_DAY, 120 * MS_PER_DAY)
            n = rng.randint(20, 90)
            stamps = sorted(start + rng.randint(0, MS_PER_DAY // 2) for _ in range(n))
            types = [rng.choice(HOT) for _ in stamps]
            if kind > 0.8:  # a buyer: retention, or exit later
                types[-1] = "commerce.purchase"
        for n, (ts, etype) in enumerate(zip(stamps, types, strict=True)):
            replayer.feed(
                orjson.dumps(
                    {
                        "event_id": f"{cid}-{n}",
                        "tenant": TENANT,
                        "contact_id": cid,
                        "type": etype,
                        "timestamp": ms_to_rfc3339(ts),
                    }
                )
            )
    for _ in replayer.snapshots():  # solves the due times
        break
    out: list[bytes] = []
    stages: Counter[str] = Counter()
    for state in replayer.states.values():
        state, _ = advance(state, now_ms, cm)
        if state.due_ms is not None and state.due_ms < now_ms + 2 * 3_600_000:
            continue  # a change due during the run would wake all its copies
        out.append(StoredContact(encode_state(state)).encode())
        stages[evaluate(state, now_ms, cm).stage] += 1
    return out, stages


def offline_index(run_dir: Path, contacts: int, values: list[bytes], seed: int) -> dict[str, Any]:
    """The segment index of the seeded contacts built in this process (``SegmentIndex.add``,
    as a recovery does), flushed and compacted: its size on disk per contact, and the time."""
    index = SegmentIndex(
        run_dir / "offline-segments.db",
        ModelView.of(load_model(MODEL)),
        legacy_sources=(),
        stage_topic="",
        partitions=PARTITIONS,
        load=lambda partition, key: None,
        overdue=lambda partition, at: (),
    )
    rng = random.Random(seed)  # the same draws as seed_tables: the same states
    started = time.monotonic()
    index.begin_rebuild(range(PARTITIONS), 0)
    for i in range(contacts):
        key = ContactKey(TENANT, f"c-{i:07d}").encode()
        value = values[rng.randrange(len(values))]
        index.add(canonical_partition(key, PARTITIONS), key, StoredContact.decode(value))
    index.end_rebuild()
    built = time.monotonic() - started
    index.compact()
    size = index.disk_bytes()
    index.close()
    return {
        "seconds": round(built, 1),
        "contacts_per_s": round(contacts / built),
        "bytes": size,
        "bytes_per_contact": round(size / contacts, 1),
    }


def seed_tables(folders: list[Path], contacts: int, values: list[bytes], seed: int) -> Counter[int]:
    """Write ``contacts`` states into the contacts table partitions of every folder."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    for folder in folders:
        (folder / "v1" / "tables").mkdir(parents=True, exist_ok=True)
    dbs = [
        [
            Rdict(str(folder / "v1" / "tables" / f"contacts-{p}.db"), options)
            for p in range(PARTITIONS)
        ]
        for folder in folders
    ]
    rng = random.Random(seed)
    batches = [[WriteBatch(raw_mode=True) for _ in range(PARTITIONS)] for _ in folders]
    per_partition: Counter[int] = Counter()
    for i in range(contacts):
        key = ContactKey(TENANT, f"c-{i:07d}").encode()
        partition = canonical_partition(key, PARTITIONS)
        value = values[rng.randrange(len(values))]
        per_partition[partition] += 1
        for f in range(len(folders)):
            batches[f][partition].put(key, value)
        if (i + 1) % 50_000 == 0:
            for f, per_db in enumerate(batches):
                for p, batch in enumerate(per_db):
                    dbs[f][p].write(batch)
                    per_db[p] = WriteBatch(raw_mode=True)
            if (i + 1) % 250_000 == 0:
                log(f"seed: {i + 1:,} contacts written")
    for f, per_db in enumerate(batches):
        for p, batch in enumerate(per_db):
            dbs[f][p].write(batch)
    for per_folder in dbs:
        for db in per_folder:
            db.flush()
            db.close()
    return per_partition


# --------------------------------------------------------------------------- requests
class Client:
    """One keep-alive connection to a worker; times each GET to its last byte."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[int, Any, float]:
        started = time.perf_counter()
        try:
            self.conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            raise
        elapsed = (time.perf_counter() - started) * 1000
        return response.status, orjson.loads(raw), elapsed


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def measure(clients: list[Client], paths: list[str], what: str) -> dict[str, Any]:
    times: list[float] = []
    items = 0
    for n, path in enumerate(paths):
        status, body, ms = clients[n % len(clients)].get(path)
        if status != 200:
            raise RuntimeError(f"{what}: {status} {body}")
        times.append(ms)
        items += len(body.get("items", ()))
    figures = {
        "requests": len(times),
        "p50_ms": round(percentile(times, 50), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "max_ms": round(max(times), 2),
        "mean_items": items / len(times),
    }
    log(f"{what}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms ({len(times)} requests)")
    return figures


def cursor_chain(client: Client, first: str, pages: int) -> list[str]:
    """The paths of ``pages`` pages following the cursors from ``first`` (not timed)."""
    paths = []
    path = first
    for _ in range(pages):
        _, body, _ = client.get(path)
        if not body.get("next_cursor"):
            break
        path = f"{first}&cursor={body['next_cursor']}"
        paths.append(path)
    return paths


def recovery_figures(log_file: Path) -> dict[str, float]:
    """The last recovery of a worker's log: contacts re-indexed and seconds."""
    found = re.findall(
        r"recovered: (\d+) contacts in partitions \[([0-9, ]*)\] re-indexed in ([0-9.]+)s",
        log_file.read_text(errors="replace"),
    )
    if not found:
        return {}
    contacts, partitions, seconds = found[-1]
    return {
        "contacts": int(contacts),
        "partitions": [int(p) for p in partitions.split(",") if p.strip()],
        "seconds": float(seconds),
    }


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    run_dir = CACHE / "segment-runs" / stamp
    run_dir.mkdir(parents=True)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "targets": TARGETS,
    }
    broker = Broker(run_dir / "kafka")
    workers: list[Worker] = []
    try:
        log("broker: starting")
        broker.start()
        _, topology = usable_prefix(
            lambda prefix: private_topology(run_dir, prefix), f"seg{stamp.lower()}"
        )
        created = subprocess.run(
            [
                *ENGINE,
                "topics",
                "create",
                "--bootstrap-servers",
                broker.bootstrap,
                "--topology",
                str(topology),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(created.stdout + created.stderr)
        now_ms = int(time.time() * 1000)
        started = time.monotonic()
        values, stages = templates(args.templates, now_ms, args.seed)
        took = time.monotonic() - started
        log(f"templates: {len(values):,} states, stages {dict(stages)}, {took:.1f}s")
        folders = [run_dir / "w1", run_dir / "w2"]
        started = time.monotonic()
        per_partition = seed_tables(folders, args.contacts, values, args.seed)
        seed_s = time.monotonic() - started
        log(f"seed: {args.contacts:,} contacts into {len(folders)} folders in {seed_s:.1f}s")
        env = {
            "ENGAGEMENT_INDEX_API_TOKENS": json.dumps({token_digest(TOKEN): ["*"]}),
            "ENGAGEMENT_INDEX_LOG_LEVEL": "INFO",
        }
        workers = [Worker(broker.bootstrap, topology, folder, env) for folder in folders]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + args.ready_timeout
        clients = [Client(w.port) for w in workers]
        while True:
            for worker in workers:
                worker.check_alive()
            if all(w.ready() for w in workers):
                status, body, _ = clients[0].get(f"/v1/tenants/{TENANT}/summary")
                if status == 200 and body["contacts"] == args.contacts:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not get ready in time")
            time.sleep(1)
        ready_s = time.monotonic() - started
        recoveries = [recovery_figures(w.log_file) for w in workers]
        log(f"ready: both workers in {ready_s:.1f}s; recoveries {recoveries}")
        summary = body
        log(f"summary: {summary['lifecycles']}")
        base = f"/v1/tenants/{TENANT}/contacts?stage=purchase&limit=100"
        for n in range(20):  # warm up
            clients[n % 2].get(base)
        requests = args.requests
        figures: dict[str, Any] = {}
        figures["page_first"] = measure(clients, [base] * requests, "page stage=purchase, first")
        chain = cursor_chain(clients[0], base, requests)
        figures["page_cursor"] = measure(clients, chain, "page stage=purchase, by cursor")
        by_index = f"{base}&sort=-index"
        figures["page_index"] = measure(
            clients, [by_index] * requests, "page stage=purchase, -index"
        )
        filtered = f"/v1/tenants/{TENANT}/contacts?customer=true&sort=-last_event&limit=100"
        figures["page_filtered"] = measure(
            clients, [filtered] * requests, "page customer=true, -last_event"
        )
        figures["summary"] = measure(
            clients, [f"/v1/tenants/{TENANT}/summary"] * requests, "summary"
        )
        index_bytes = [folder_bytes(f / "v1" / "tables" / "segments.db") for f in folders]
        owned = [r.get("contacts", 0) for r in recoveries]
        rss = [w.peak_rss() for w in workers]
        for worker in workers:
            worker.stop()
        offline = offline_index(run_dir, args.contacts, values, args.seed)
        log(f"index built offline: {offline}")
        results.update(
            {
                "contacts": args.contacts,
                "templates": len(values),
                "template_stages": dict(stages),
                "per_partition": dict(sorted(per_partition.items())),
                "seed_seconds": round(seed_s, 1),
                "ready_seconds": round(ready_s, 1),
                "recoveries": recoveries,
                "rebuild_contacts_per_s": round(
                    sum(owned) / max(sum(r.get("seconds", 0.0) for r in recoveries), 1e-9) * 1
                )
                if all(recoveries)
                else None,
                "index_bytes_live": index_bytes,
                "index_offline": offline,
                "index_bytes_per_contact": offline["bytes_per_contact"],
                "summary_lifecycles": summary["lifecycles"],
                "figures": figures,
                "peak_rss_bytes": rss,
            }
        )
        return results
    finally:
        for worker in workers:
            worker.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def append_history(results: dict[str, Any]) -> None:
    f = results["figures"]
    section = "## Segment queries"
    text = RESULTS_MD.read_text()
    if section not in text:
        text = (
            text.rstrip("\n")
            + "\n\n"
            + "\n".join(
                [
                    section,
                    "",
                    "One row per `make bench-segments` run (bench/segments.py; bench/README.md",
                    "says how it works). Two workers on one 2-core machine, the client on it too.",
                    "Latencies in ms, p50 / p99, a page of 100. Targets: page p99 < 100 ms,",
                    "summary p99 < 250 ms.",
                    "",
                    "| date | commit | contacts | page stage=purchase | by cursor | sort=-index"
                    " | customer=true, -last_event | summary | ready s | re-index contacts/s"
                    " | index B/contact |",
                    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                ]
            )
            + "\n"
        )
    m = results["machine"]
    commit = m["commit"][:10] + ("+dirty" if m["src_dirty"] else "")

    def pair(name: str) -> str:
        return f"{f[name]['p50_ms']:.1f} / {f[name]['p99_ms']:.1f}"

    row = (
        f"| {results['date'][:16].replace('T', ' ')} | {commit} | {results['contacts']:,} | "
        f"{pair('page_first')} | {pair('page_cursor')} | {pair('page_index')} | "
        f"{pair('page_filtered')} | {pair('summary')} | {results['ready_seconds']:.0f} | "
        f"{results['rebuild_contacts_per_s'] or 0:,} | {results['index_bytes_per_contact']:.0f} |"
    )
    RESULTS_MD.write_text(text.rstrip("\n") + "\n" + row + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--templates", type=int, default=4_000, help="distinct states")
    parser.add_argument("--requests", type=int, default=300, help="requests per kind")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ready-timeout", type=float, default=1200.0)
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument("--no-history", action="store_true", help="leave bench/RESULTS.md alone")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    ok = {
        "page": max(
            results["figures"][k]["p99_ms"] for k in ("page_first", "page_cursor", "page_index")
        )
        < TARGETS["page_p99_ms"],
        "summary": results["figures"]["summary"]["p99_ms"] < TARGETS["summary_p99_ms"],
    }
    results["targets_met"] = ok
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str))
    log(f"results: {RESULTS_JSON.relative_to(REPO)}; targets met: {ok}")
    if not args.no_history:
        append_history(results)
        log(f"history: row appended to {RESULTS_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
