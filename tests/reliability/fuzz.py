"""The full fuzz run (``make reliability``): every target of ``fuzz_targets`` under two engines.

* ``hypothesis``: hypothesis's own engine (generation, then shrinking of any failure),
  ``--hypothesis-examples`` inputs per target.
* ``atheris``: coverage-guided libFuzzer (atheris, instrumenting ``engagement_index``) feeding
  the same hypothesis strategies through ``fuzz_one_input``, ``--runs`` inputs per target, plus
  ``events-raw``: raw bytes straight into the event parser, from a corpus of valid events.
  Each target runs in its own process (libFuzzer owns the process).

An input counts when it reached the target's check. Figures (inputs, seconds, inputs/s, and
any failure) are printed and written to ``var/reliability/fuzz.json``; the exit status is 1
if any target failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STRUCTURED = ("events", "worker", "segment", "pixel", "sendgrid", "mailgun")
RAW = ("events-raw",)
JSON_TOKENS = [
    '"event_id"',
    '"tenant"',
    '"contact_id"',
    '"type"',
    '"timestamp"',
    '"properties"',
    '"account_id"',
    '"email.open"',
    '"email.click"',
    '"web.page_view"',
    '"commerce.purchase"',
    '"2026-11-20T12:00:00Z"',
    '"+05:30"',
    '"\\u0000"',
    '"\\ud800"',
    "null",
    "true",
    "{}",
    "[]",
]


# ------------------------------------------------------------------------------ hypothesis
def run_hypothesis(name: str, examples: int) -> dict[str, Any]:
    """hypothesis's engine on one target, ``examples`` generated inputs."""
    from hypothesis import HealthCheck, given, settings

    from tests.reliability.fuzz_targets import COUNTS, TARGETS

    strategy, check = TARGETS[name]
    test = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(given(strategy)(check))
    started = time.monotonic()
    failure = None
    try:
        test()
    except Exception as exc:  # the figure records it; the exit status reports it
        failure = f"{type(exc).__name__}: {str(exc)[:2000]}"
    seconds = time.monotonic() - started
    return _figures(COUNTS[name], seconds, failure)


def _figures(inputs: int, seconds: float, failure: str | None) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "seconds": round(seconds, 1),
        "inputs_per_s": round(inputs / seconds, 1) if seconds else None,
        "failure": failure,
    }


# -------------------------------------------------------------------------------- atheris
def atheris_child(name: str, runs: int, count_file: Path, corpus: Path) -> None:
    """In a child process: libFuzzer drives one target until ``runs`` inputs reached it."""
    import atheris

    with atheris.instrument_imports(include=["engagement_index"]):
        from tests.reliability import fuzz_targets

    counts = fuzz_targets.COUNTS
    key = "events" if name == "events-raw" else name
    if name == "events-raw":
        target = fuzz_targets.check_event_parser
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(fuzz_targets.seed_events()):
            (corpus / f"seed-{i}").write_bytes(seed)
    else:
        from hypothesis import HealthCheck, given, settings

        strategy, check = fuzz_targets.TARGETS[name]
        test = settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))(
            given(strategy)(check)
        )
        target = test.hypothesis.fuzz_one_input  # type: ignore[attr-defined]

    started = time.monotonic()

    def save() -> None:
        count_file.write_text(
            json.dumps({"inputs": counts[key], "seconds": time.monotonic() - started})
        )

    def one(data: bytes) -> None:
        target(data)
        n = counts[key]
        if n % 5000 == 0:
            save()
        if n >= runs:
            save()
            os._exit(0)

    dictionary = corpus.parent / "json.dict"
    dictionary.write_text("".join(f"{json.dumps(t)}\n" for t in JSON_TOKENS))
    argv = [
        sys.argv[0],
        f"-runs={runs * 20}",
        "-max_len=4096",
        f"-dict={dictionary}",
        f"-artifact_prefix={corpus.parent}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, one)
    atheris.Fuzz()


def run_atheris(name: str, runs: int, workdir: Path) -> dict[str, Any]:
    """Run one atheris target in a child process; its figures."""
    count_file = workdir / f"{name}.count.json"
    corpus = workdir / name / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.reliability.fuzz",
                "--atheris-child",
                name,
                "--runs",
                str(runs),
                "--count-file",
                str(count_file),
                "--corpus",
                str(corpus),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - started
    counted = json.loads(count_file.read_text()) if count_file.exists() else {"inputs": 0}
    failure = None
    if proc.returncode != 0 or counted["inputs"] < runs:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        failure = f"exit {proc.returncode}: " + "\n".join(tail)
    return _figures(int(counted["inputs"]), seconds, failure)


# ----------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="atheris inputs per target")
    parser.add_argument("--hypothesis-examples", type=int, default=5_000)
    parser.add_argument("--engines", default="hypothesis,atheris")
    parser.add_argument("--targets", default=",".join(STRUCTURED + RAW))
    parser.add_argument("--out", type=Path, default=REPO / "var" / "reliability" / "fuzz.json")
    parser.add_argument("--atheris-child", help=argparse.SUPPRESS)
    parser.add_argument("--count-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.atheris_child:
        atheris_child(args.atheris_child, args.runs, args.count_file, args.corpus)
        return 0
    targets = args.targets.split(",")
    engines = args.engines.split(",")
    report: dict[str, Any] = {"suite": "fuzz", "engines": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for engine in engines:
            results: dict[str, Any] = {}
            for name in targets:
                if engine == "hypothesis" and name in RAW:
                    continue
                if engine == "hypothesis":
                    results[name] = run_hypothesis(name, args.hypothesis_examples)
                else:
                    results[name] = run_atheris(name, args.runs, Path(tmp))
                print(json.dumps({"engine": engine, "target": name, **results[name]}), flush=True)
            report["engines"][engine] = results
    report["seconds"] = round(time.monotonic() - started, 1)
    report["failures"] = sum(
        1 for r in report["engines"].values() for f in r.values() if f["failure"]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
