"""The replay's line path in the kernel against the Python core: identical bytes.

With the kernel, the replay hands whole chunks of the file to ``_kernel`` (``replay_chunk``),
which parses, validates, dedupes and scores the lines it takes and writes the transitions as
JSON; every other line goes back to the Python side. These tests draw lines on the frontier of
the fast path (every field in and out of its rules, JSON the two parsers might read apart,
timestamps of every shape, repeated event ids, identity records) and replay them both ways:
the kernel's (``feed_chunks``, cut into chunks at random places) and the Python core's
(``kernel=False``, line by line). Transitions, rejects, counters, final states and snapshots
must be the same bytes. The worker decodes record values on the same fast path
(``Kernel.event_fields``): what it takes, the Python core decodes to the same fields.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engagement_index.core.events import parse_event_fields
from engagement_index.core.model import ScoringModel, load_model
from engagement_index.core.state import encode_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.kernel import kernel_available, kernel_for
from engagement_index.replay import Replayer

REPO = Path(__file__).resolve().parents[2]
MODEL_FILES = sorted((REPO / "config" / "models").glob("*.yaml"))
#: the models the replay scores with the kernel (with accounts, the Python core scores)
MODELS = {
    path.stem: model
    for path in MODEL_FILES
    if (model := load_model(path)).accounts_compiled is None
}
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z
HOUR = 3_600_000

pytestmark = pytest.mark.skipif(not kernel_available(), reason="the kernel is not built")

ABSENT = object()


def _timestamp(ms: int, shape: int) -> Any:
    """The instant ``ms`` written in one of many shapes (some valid, some not)."""
    text = ms_to_rfc3339(ms)  # 2026-01-01T00:00:00.000Z
    date, time = text[:10], text[11:19]
    frac = text[20:23]
    shapes: list[Any] = [
        text,
        f"{date}T{time}Z",
        f"{date}T{time}.{frac}123Z",
        f"{date}T{time}.{frac}+00:00",
        f"{date}T{time}.{frac}-00:00",
        f"{date}t{time}.{frac}Z",
        f"{date} {time}.{frac}Z",
        f"{date}T{time}.{frac}123456Z",
        f"{date}T{time}.5Z",
        f"{date}T{time}.{frac}z",
        f"{date}T{time}.{frac}+24:00",
        f"{date}T{time}.{frac}+01:60",
        "0000-01-01T00:00:00.000Z",
        "2026-02-29T00:00:00.000Z",
        "2024-02-29T12:00:00.000+14:00",
        f"{date}T24:00:00.000Z",
        f"{date}T{time}.{frac}",
        ms,
        None,
        "0001-01-01T00:00:00.000+00:01",
    ]
    return shapes[shape % len(shapes)]


@st.composite
def lines(draw: st.DrawFn, model: ScoringModel) -> list[bytes]:
    """A JSON Lines file's lines (each ends with ``\\n`` but maybe the last)."""
    types = sorted(model.compiled.rules)
    count = draw(st.integers(1, 60))
    out: list[bytes] = []
    for i in range(count):
        kind = draw(st.integers(0, 99))
        ms = START_MS + draw(st.integers(0, 10 * 24)) * HOUR + draw(st.integers(0, HOUR))
        event: dict[str, Any] = {
            "event_id": f"e{draw(st.integers(0, 12))}",
            "tenant": draw(st.sampled_from(["north", "south", ABSENT, "default"])),
            "contact_id": f"c{draw(st.integers(0, 4))}",
            "type": draw(st.sampled_from(types)),
            "timestamp": ms_to_rfc3339(ms),
        }
        raw: bytes | None = None
        if kind < 45:
            pass  # plainly valid
        elif kind < 50:
            event["timestamp"] = _timestamp(ms, draw(st.integers(0, 40)))
        elif kind < 53:
            event["tenant"] = draw(
                st.sampled_from([None, "", "bad tenant", "t" * 65, "t" * 64, 7, "ü"])
            )
        elif kind < 56:
            event["event_id"] = draw(
                st.sampled_from(["", "x" * 128, "x" * 129, "é" * 128, None, 3, "a\u0000b"])
            )
        elif kind < 59:
            event["contact_id"] = draw(st.sampled_from(["", "y" * 256, "y" * 257, "ç", [], "\t"]))
        elif kind < 62:
            event["type"] = draw(st.sampled_from(["x.nope", "bad", "a.b.c", "A-1._x", 5, None]))
        elif kind < 66:
            event["account_id"] = draw(st.sampled_from(["acct-1", None, 5, ""]))
        elif kind < 72:
            event["properties"] = draw(
                st.sampled_from(
                    [{}, {"a": 1}, None, [], "p", {"n": {"m": [1, 2.5, None, True, "s"]}}]
                )
            )
        elif kind < 74:
            event[draw(st.sampled_from(["kind", "foo", "Type", "event_id "]))] = "x"
        else:
            raw = draw(
                st.sampled_from(
                    [
                        b"",
                        b"   ",
                        b"{not json",
                        b"[]",
                        b"null",
                        b'"s"',
                        b"\xef\xbb\xbf{}",
                        b"\xff\xfe",
                    ]
                )
            )
            if kind < 90:
                raw = None
                dumped = orjson.dumps({k: v for k, v in event.items() if v is not ABSENT})
                variant = kind % 8
                if variant == 0:
                    dumped = json.dumps(
                        {k: v for k, v in event.items() if v is not ABSENT}, ensure_ascii=True
                    ).encode()
                elif variant == 1:
                    dumped = dumped.replace(b'"event_id"', b'"\\u0065vent_id"')
                elif variant == 2:
                    dumped = dumped[:-1] + b',"event_id":"dup"}'
                elif variant == 3:
                    dumped = dumped[:-1] + b',"properties":{"a":"\\ud800"}}'
                elif variant == 4:
                    dumped = dumped[:-1] + b',"properties":{"a":1e400}}'
                elif variant == 5:
                    dumped = dumped[:-1] + b',"properties":{"a":' + b"9" * 4400 + b"}}"
                elif variant == 6:
                    dumped = dumped[:-1] + b',"properties":' + b"[" * 150 + b"]" * 150 + b"}"
                else:
                    dumped = b" " + dumped + b" \r"
                raw = dumped
            elif kind < 93:
                raw = orjson.dumps(
                    {
                        "kind": "identify",
                        "event_id": f"i{i}",
                        "tenant": "north",
                        "contact_id": "c0",
                        "anonymous_id": f"c{draw(st.integers(1, 4))}",
                        "timestamp": ms_to_rfc3339(ms),
                    }
                )
            elif kind < 96:
                raw = orjson.dumps({k: v for k, v in event.items() if v is not ABSENT})
                raw = raw[:10] + b"\xc3" + raw[10:]  # invalid UTF-8
        if raw is None:
            raw = orjson.dumps({k: v for k, v in event.items() if v is not ABSENT})
        out.append(raw + b"\n")
    if out[-1] != b"\n" and draw(st.booleans()):
        # no newline at the end of the file (a blank last line without its newline would be
        # no line at all: the file's lines are what ``for line in file`` gives)
        out[-1] = out[-1][:-1]
    return out


def _python_replay(model: ScoringModel, data: list[bytes], **options: Any) -> dict[str, Any]:
    replayer = Replayer(model, kernel=False, **options)
    out = b"".join(t.to_json_bytes() + b"\n" for t in replayer.feed_lines(data))
    return _result(replayer, out + replayer.finish_json())


def _kernel_replay(
    model: ScoringModel, data: bytes, cuts: list[int], **options: Any
) -> dict[str, Any]:
    replayer = Replayer(model, kernel=True, **options)
    assert replayer._store is not None
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(edges)]
    out = b"".join(replayer.feed_chunks(chunks))
    return _result(replayer, out + replayer.finish_json())


def _result(replayer: Replayer, out: bytes) -> dict[str, Any]:
    states = replayer.final_states()
    return {
        "transitions": out,
        "rejects": replayer.rejects,
        "stats": replayer.stats,
        "keys": list(states),
        "states": [encode_state(s) for s in states.values()],
        "snapshots": [s.to_json_bytes() for s in replayer.snapshots()],
    }


def test_most_shipped_models_replay_with_the_kernel() -> None:
    assert len(MODELS) >= 4
    assert {"default", "journey"} <= set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_lines_on_the_fast_paths_frontier_give_the_python_core_bytes(
    name: str, data: st.DataObject
) -> None:
    model = MODELS[name]
    file_lines = data.draw(lines(model))
    cuts = data.draw(st.lists(st.integers(0, 1 << 20), max_size=6))
    options: dict[str, Any] = {}
    if data.draw(st.booleans()):
        options["until_ms"] = START_MS + data.draw(st.integers(0, 10 * 24)) * HOUR
    if data.draw(st.booleans()):
        options["max_bytes"] = data.draw(st.integers(100, 400))
    if data.draw(st.booleans()):
        options["dedupe_window_ms"] = data.draw(st.integers(0, 5 * 24)) * HOUR
    expected = _python_replay(model, file_lines, **options)
    got = _kernel_replay(model, b"".join(file_lines), cuts, **options)
    assert got == expected


def test_a_file_of_the_workload_gives_the_python_core_bytes_by_chunk_and_by_line() -> None:
    """Hand-made: every kind of line the kernel hands back, between lines it takes."""
    model = MODELS["default"]
    types = sorted(model.compiled.rules)
    base = {"tenant": "north", "contact_id": "c1", "type": types[0]}
    rows = [
        {**base, "event_id": "a", "timestamp": "2026-01-01T00:00:00.000Z"},
        {**base, "event_id": "a", "timestamp": "2026-01-01T00:00:01.000Z"},  # a duplicate
        {**base, "event_id": "b", "timestamp": "2026-01-01 00:00:02.000Z"},  # slow path
        {**base, "event_id": "c", "timestamp": "2026-01-01T00:00:03.000Z", "x": 1},  # rejected
        {**base, "event_id": "d", "timestamp": "2026-01-05T00:00:03.123456+02:00"},
    ]
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows) + b"\n{oops"
    lines_ = [line + b"\n" for line in data.split(b"\n")]
    lines_[-1] = lines_[-1][:-1]
    expected = _python_replay(model, lines_)
    for cuts in ([], [1], [len(data) // 2], list(range(0, len(data), 7))):
        assert _kernel_replay(model, data, cuts) == expected
    assert [r.line for r in expected["rejects"]] == [4, 6, 7]
    assert expected["stats"].duplicates == 1
    assert expected["stats"].applied == 3


def test_decayed_components_are_written_as_the_python_core_writes_them() -> None:
    """Months between events leave components small enough for exponent notation (the
    kernel writes the floats of the transitions itself, as orjson does)."""
    model = MODELS["default"]
    kinds = ["email.click"] * 6 + ["web.page_view"] + ["commerce.purchase"] * 3
    kinds += ["product.core_action"] * 8
    times = [f"2026-01-01T00:00:00.00{i}Z" for i in range(6)] + ["2026-04-01T00:00:00.000Z"]
    times += [f"2026-05-20T00:00:0{i}.000Z" for i in range(3)]
    times += [f"2026-06-20T00:00:0{i}.000Z" for i in range(8)]
    rows = [
        {"event_id": f"z{i}", "tenant": "north", "contact_id": "far", "type": k, "timestamp": t}
        for i, (k, t) in enumerate(zip(kinds, times, strict=True))
    ]
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    until = {"until_ms": 1_893_456_000_000}  # 2030-01-01
    expected = _python_replay(model, [line + b"\n" for line in data.splitlines()], **until)
    got = _kernel_replay(model, data, [], **until)
    assert got == expected
    assert b"e-8," in got["transitions"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_record_values_the_kernel_decodes_are_decoded_so_by_the_python_core(
    data: st.DataObject,
) -> None:
    """The worker's decode (``Kernel.event_fields``, the same fast path, on record values):
    every value it takes, ``parse_event_fields`` takes with the same fields; values it does
    not take go to the Python core, which words the rejections."""
    model = load_model(REPO / "config" / "models" / "default.yaml")
    kernel = kernel_for(model.compiled)
    assert kernel is not None
    for line in data.draw(lines(model)):
        value = line.removesuffix(b"\n")
        fields = kernel.event_fields(value)
        if fields is None:
            continue
        assert tuple(parse_event_fields(value)[:5]) == fields, value


def test_the_kernel_decodes_plain_values_and_leaves_the_rest() -> None:
    """Hand-made: plain values are taken; what only the Python core may judge is not."""
    model = load_model(REPO / "config" / "models" / "default.yaml")
    kernel = kernel_for(model.compiled)
    assert kernel is not None
    event = {
        "event_id": "e1",
        "contact_id": "c1",
        "type": sorted(model.compiled.rules)[0],
        "timestamp": "2026-01-01T00:00:00.250+01:00",
    }
    plain = orjson.dumps(event)
    assert kernel.event_fields(plain) == tuple(parse_event_fields(plain)[:5])
    assert kernel.event_fields(plain)[1] == "default"  # type: ignore[index]
    for bad in (
        plain[:-1] + b',"kind":"x"}',
        plain[:-1] + b',"event_id":"dup"}',
        plain.replace(b"2026-01-01T00", b"2026-13-01T00"),
        plain[:5] + b"\xc3" + plain[5:],
        b"[]",
    ):
        assert kernel.event_fields(bad) is None, bad
