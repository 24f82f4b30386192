"""Write the golden files of the default model: ``python -m tests.golden.generate``.

Replays the inputs of ``tests/unit/core/test_default_model_golden.py`` with the code on the
import path and the model ``config/models/default.yaml`` of the same checkout, and writes one
gzip JSON Lines file per input next to this module (or into ``--out``):

* line 1: metadata (the input, its digest, the counts, the commit of the scoring code);
* then ``transitions`` lines: every transition's ``to_json_bytes()``, in emission order;
* then ``snapshots`` lines: every final snapshot's ``to_json_bytes()``, sorted by
  ``(tenant, contact_id)``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
from collections import Counter
from pathlib import Path

import orjson
from bench import workload

import engagement_index
from engagement_index.core.model import load_model
from tests.unit.core import test_default_model_golden as golden


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def code_commit() -> str | None:
    """The commit of the imported ``engagement_index`` ("+modified" if its tree differs)."""
    package = Path(engagement_index.__file__).resolve().parent
    commit = _git(package, "rev-parse", "HEAD")
    if commit is None:
        return None
    changes = _git(package, "status", "--porcelain", "--", ".", "../../bench", "../../config")
    return commit + ("+modified" if changes else "")


def build(name: str) -> tuple[dict[str, object], bytes]:
    """The metadata and the uncompressed content of input ``name``'s golden file."""
    lines = golden.INPUTS[name]()
    outputs = golden.run(lines, golden.MODEL_PATH)
    records = outputs.transitions + outputs.snapshots
    for record in records:
        # the test re-serialises parsed records: that must give the very same bytes
        if b"\n" in record or orjson.dumps(orjson.loads(record)) != record:
            raise SystemExit(f"{name}: a record does not survive a JSON round trip: {record!r}")
    model = load_model(golden.MODEL_PATH)
    reasons = Counter(orjson.loads(t)["reason"] for t in outputs.transitions)
    meta: dict[str, object] = {
        "golden": "default-model",
        "input": name,
        "events": len(lines),
        "input_sha256": golden.input_sha256(lines),
        "model": "config/models/default.yaml",
        "model_version": model.version,
        "model_sha256": hashlib.sha256(golden.MODEL_PATH.read_bytes()).hexdigest(),
        "code_commit": code_commit(),
        "transitions": len(outputs.transitions),
        "snapshots": len(outputs.snapshots),
        "transitions_by_reason": dict(sorted(reasons.items())),
    }
    if name == "bench":
        spec = golden.BENCH_SPEC
        meta["bench_spec"] = {
            "events": spec.events,
            "contacts": spec.contacts,
            "seed": spec.seed,
            "end_ms": spec.end_ms,
        }
    else:
        meta["seed"] = golden.ADV_SEED
    content = b"".join(line + b"\n" for line in [orjson.dumps(meta), *records])
    return meta, content


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="output directory"
    )
    args = parser.parse_args(argv)
    print(f"engagement_index: {Path(engagement_index.__file__).parent}")
    print(f"bench.workload:   {workload.__file__}")
    print(f"model:            {golden.MODEL_PATH}")
    for name in golden.INPUT_NAMES:
        meta, content = build(name)
        path = args.out / golden.golden_path(name).name
        path.write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
        print(
            f"{path}: {meta['events']} events, {meta['transitions']} transitions "
            f"{meta['transitions_by_reason']}, {meta['snapshots']} snapshots, "
            f"{path.stat().st_size} bytes, code {meta['code_commit']}"
        )


if __name__ == "__main__":
    main()
