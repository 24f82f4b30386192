"""Accounts in the core and the replay, against the hand computation of
``tests/account_scenario.py`` and the independent ``tests/reference/accounts.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from engagement_index.core.accounts import (
    JOIN,
    LEAVE,
    LICENCES,
    AccountUpdate,
    apply,
    decode_account,
    decode_update,
    encode_account,
    encode_update,
    evaluate_account,
)
from engagement_index.core.events import ContactKey, EventFields
from engagement_index.core.lifecycle import step
from engagement_index.core.model import load_model, parse_model
from engagement_index.errors import ModelError
from engagement_index.replay import Replayer
from tests.account_scenario import ACCOUNT, TENANT, scenario
from tests.reference.accounts import AccountReference

B2B = Path(__file__).resolve().parents[3] / "config" / "models" / "b2b-qualification.yaml"
NOW = 1_795_000_000_000


def test_twenty_members_and_ten_licences_match_the_hand_computation() -> None:
    model = load_model(B2B)
    case = scenario(NOW)
    replayer = Replayer(model)
    reference = AccountReference(B2B)
    for line in case.events:
        replayer.feed(line)
        reference.feed(line)
    assert not replayer.rejects
    acc = model.accounts_compiled
    assert acc is not None
    snapshot = evaluate_account(replayer.accounts[(TENANT, ACCOUNT)], NOW, acc)
    expected = reference.levels(TENANT, ACCOUNT, NOW)
    champions = sorted(expected["member_indices"][f"c-0{c}"] for c in range(3))
    # the hand computation (tests/account_scenario.py), with the members' indices from the
    # independent contact reference
    assert (snapshot.members, snapshot.active_users, snapshot.licences) == (20, 6, 10)
    assert snapshot.utilisation == pytest.approx(0.6, abs=1e-12)
    assert snapshot.index == pytest.approx(sum(champions) / 3, abs=1e-9)
    assert snapshot.indices["champion"] == pytest.approx(champions[-1], abs=1e-9)
    assert snapshot.indices["engaged_share"] == pytest.approx(15.0, abs=1e-12)
    assert snapshot.indices["utilisation"] == pytest.approx(60.0, abs=1e-12)
    for name in ("engagement", "champion", "engaged_share", "utilisation"):
        assert snapshot.indices[name] == pytest.approx(expected[name], abs=1e-9), name
    assert snapshot.lifecycles["health"]["stage"] == "healthy"
    assert snapshot.lifecycles["band"]["stage"] == "warm"  # 30 <= engagement < 60
    assert [m["contact_id"] for m in snapshot.top_members[:3]] == sorted(
        (f"c-0{c}" for c in range(3)), key=lambda c: -expected["member_indices"][c]
    )
    # c-05 goes quiet: at_risk at exactly its event + 14 days
    assert reference.levels(TENANT, ACCOUNT, case.quiet_at - 1)["utilisation"] == 60.0
    assert reference.levels(TENANT, ACCOUNT, case.quiet_at)["utilisation"] == 50.0
    replayer.finish(case.quiet_at + 60_000)
    health = [t for t in replayer.account_transitions if t.lifecycle == "health"]
    last = health[-1]
    assert (last.from_stage, last.to_stage, last.reason, last.rule_id) == (
        "healthy",
        "at_risk",
        "decay",
        "slipping",
    )
    assert last.occurred_at == snapshot_time(case.quiet_at)
    assert (last.members, last.active_users, last.licences) == (20, 5, 10)
    assert last.components["utilisation"] == 50.0
    after = evaluate_account(replayer.accounts[(TENANT, ACCOUNT)], case.quiet_at + 1, acc)
    assert after.lifecycles["health"]["stage"] == "at_risk"
    # 14 days on, the champions' last events (an hour before NOW) are 14 days old: nobody is
    # active, though their states moved on since (their band changes came later)
    later = NOW + 14 * 86_400_000
    gone = evaluate_account(replayer.accounts[(TENANT, ACCOUNT)], later, acc)
    assert (gone.active_users, gone.indices["utilisation"]) == (0, 0.0)
    assert reference.levels(TENANT, ACCOUNT, later)["active_users"] == 0


def snapshot_time(ms: int) -> str:
    from engagement_index.core.timestamps import ms_to_rfc3339

    return ms_to_rfc3339(ms)


def _member(contact: str, n: int, at: int) -> AccountUpdate:
    model = load_model(B2B)
    state = None
    for i in range(n):
        fields = EventFields(f"{contact}-{i}", TENANT, contact, "email.click", at + i, ACCOUNT)
        state, _ = step(state, fields, model.compiled)
    assert state is not None
    return AccountUpdate(JOIN, TENANT, ACCOUNT, at + n - 1, f"{contact}-x", contact, n, state)


def test_an_update_applied_twice_or_an_older_one_changes_nothing() -> None:
    acc = load_model(B2B).accounts_compiled
    assert acc is not None
    state, first = apply(None, _member("a", 3, NOW), acc)
    assert state is not None
    assert [t.reason for t in first] == ["first_seen", "first_seen"]
    again, none = apply(state, _member("a", 3, NOW), acc)
    assert (again, none) == (state, [])
    older, none = apply(state, _member("a", 2, NOW), acc)
    assert (older, none) == (state, [])
    licences = AccountUpdate(LICENCES, TENANT, ACCOUNT, NOW, "l", licences=4)
    with_licences, _ = apply(state, licences, acc)
    assert with_licences is not None
    assert with_licences.licences == 4
    assert apply(with_licences, licences, acc) == (with_licences, [])
    stale = AccountUpdate(LICENCES, TENANT, ACCOUNT, NOW - 1, "old", licences=9)
    assert apply(with_licences, stale, acc) == (with_licences, [])
    gone, _ = apply(with_licences, AccountUpdate(LEAVE, TENANT, ACCOUNT, NOW, None, "a"), acc)
    assert gone is not None
    assert gone.members == ()
    assert apply(None, AccountUpdate(LEAVE, TENANT, ACCOUNT, NOW, None, "a"), acc) == (None, [])


def test_states_and_updates_round_trip_through_their_bytes() -> None:
    acc = load_model(B2B).accounts_compiled
    assert acc is not None
    state = None
    for name in ("a", "b", "ü-ç"):
        state, _ = apply(state, _member(name, 2, NOW), acc)
    assert state is not None
    state, _ = apply(
        state, AccountUpdate(LICENCES, TENANT, ACCOUNT, NOW + 7, "l", licences=12), acc
    )
    assert state is not None
    assert (state.licences, state.licences_ms) == (12, NOW + 7)
    raw = encode_account(state)
    assert decode_account(raw, ContactKey(TENANT, ACCOUNT)) == state
    update = _member("b", 2, NOW)
    assert decode_update(encode_update(update)) == update
    licences = AccountUpdate(LICENCES, TENANT, ACCOUNT, NOW, None, licences=0)
    assert decode_update(encode_update(licences)) == licences


def test_members_follow_the_latest_event_that_names_an_account() -> None:
    model = load_model(B2B)
    replayer = Replayer(model)

    def line(n: int, at: int, account: str | None) -> str:
        extra = f', "account_id": "{account}"' if account else ""
        return (
            f'{{"event_id": "e{n}", "tenant": "acme", "contact_id": "m", "type": '
            f'"email.click", "timestamp": "{snapshot_time(at)}"{extra}}}'
        )

    replayer.feed(line(1, NOW, "x"))
    replayer.feed(line(2, NOW + 5, "y"))
    replayer.feed(line(3, NOW + 1, "x"))  # older than the move to y: stays in y
    replayer.feed(line(4, NOW + 9, None))  # names none: stays in y
    assert replayer.memberships[("acme", "m")] == ("y", NOW + 5)
    assert [m.contact_id for m in replayer.accounts[("acme", "x")].members] == []
    y = replayer.accounts[("acme", "y")]
    assert [(m.contact_id, m.version) for m in y.members] == [("m", 4)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"indices": {"utilisation": {"aggregate": "max"}}}, "reserved"),
        ({"indices": {"e": {"aggregate": "top_k_mean"}}}, "k: required"),
        ({"indices": {"e": {"aggregate": "max", "level": 3}}}, "level: required"),
        (
            {"lifecycles": {"t": {"trend": {"fast": "7d", "slow": "28d", "margin": 0.2}}}},
            "no trend",
        ),
        (
            {
                "lifecycles": {
                    "h": {
                        "stages": {"a": {}, "b": {}},
                        "initial": [{"stage": "a"}],
                        "edges": [
                            {"id": "x", "from": "a", "to": "b", "when": {"index": "nope",
                                                                         "at_least": 3}}
                        ],
                    }
                }
            },
            "accounts.lifecycles.h.edges[0].when.index: unknown index 'nope'",
        ),
    ],
)  # fmt: skip
def test_the_loader_rejects_bad_account_sections(change: dict[str, object], message: str) -> None:
    import yaml

    raw = yaml.safe_load(B2B.read_text())
    raw["accounts"].update(change)
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_model(raw)


def test_a_model_may_not_score_the_account_channel() -> None:
    import yaml

    raw = yaml.safe_load(B2B.read_text())
    raw["events"]["account.login"] = {"component": "web", "points": 1}
    with pytest.raises(ModelError, match="account channel"):
        parse_model(raw)


SWITCHING = """
format: 2
version: "switch-1"
components:
  p: {half_life: 30d, saturation: 10}
  q: {half_life: 30d, saturation: 10}
events:
  x.p: {component: p, points: 1}
  x.q: {component: q, points: 30}
indices:
  on_p: {p: 1.0}
  on_q: {q: 1.0}
lifecycles:
  stage:
    stages: {early: {index: on_p}, later: {index: on_q}}
    initial: [{stage: early}]
    edges: [{id: aged, from: early, to: later, when: {in_stage_for: 1d}}]
accounts:
  active_within: 30d
  indices:
    best: {aggregate: max}
  lifecycles:
    level:
      stages: {low: {}, high: {}}
      initial: [{stage: high, when: {index: best, at_least: 50}}, {stage: low}]
      edges:
        - {id: up, from: low, to: high, when: {index: best, at_least: 50}}
        - {id: down, from: high, to: low, when: {index: best, below: 40}}
"""


def test_a_member_switching_weighting_by_time_moves_the_account_at_that_time() -> None:
    """The member's index weighting changes at its own due time (early -> later after 1 day,
    from its p score, 9, to its q score, 75): the account, whose levels otherwise only
    fall, is evaluated there and goes high at that millisecond."""
    import yaml

    model = parse_model(yaml.safe_load(SWITCHING))
    replayer = Replayer(model)
    for n, etype in enumerate(("x.p", "x.q")):
        replayer.feed(
            f'{{"event_id": "e{n}", "tenant": "acme", "contact_id": "m", "type": "{etype}", '
            f'"timestamp": "{snapshot_time(NOW + n)}", "account_id": "{ACCOUNT}"}}'
        )
    replayer.finish(NOW + 3 * 86_400_000)
    moves = [
        (t.from_stage, t.to_stage, t.reason, t.occurred_at) for t in replayer.account_transitions
    ]
    assert moves == [
        (None, "low", "first_seen", snapshot_time(NOW)),
        ("low", "high", "threshold", snapshot_time(NOW + 86_400_000)),
    ]


def test_the_replay_command_writes_the_account_changes_and_the_accounts(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from engagement_index.core.timestamps import ms_to_rfc3339

    case = scenario(NOW)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(case.events) + b"\n")
    changes, accounts = tmp_path / "changes.jsonl", tmp_path / "accounts.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "engagement_index.cli", "replay", str(events), "--model", str(B2B),
         "--until", ms_to_rfc3339(case.quiet_at), "--account-changes-out", str(changes),
         "--accounts-out", str(accounts)],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    replayer = Replayer(load_model(B2B), until_ms=case.quiet_at)
    for line in case.events:
        replayer.feed(line)
    replayer.finish()
    lines = changes.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        t.model_dump(mode="json") for t in replayer.account_transitions
    ]
    assert json.loads(lines[-1])["to_stage"] == "at_risk"
    (account,) = [json.loads(x) for x in accounts.read_text().splitlines()]
    assert (account["account_id"], account["members"], account["active_users"]) == (ACCOUNT, 20, 5)
    assert account["lifecycles"]["health"]["stage"] == "at_risk"


DECAYING = """
format: 2
version: "decaying-1"
components:
  p: {half_life: 2d, saturation: 10}
  q: {half_life: 9d, saturation: 4}
events:
  x.p: {component: p, points: 7}
  x.q: {component: q, points: 3}
indices:
  mix: {p: 0.6, q: 0.4}
lifecycles:
  stage:
    stages: {only: {}}
    initial: [{stage: only}]
accounts:
  active_within: 3d
  indices:
    best: {aggregate: max}
    share: {aggregate: share_at_least, level: 30}
    top: {aggregate: top_k_mean, k: 2}
  lifecycles:
    best:
      stages: {up: {index: best}, down: {index: best}}
      initial: [{stage: up, when: {index: best, at_least: 20}}, {stage: down}]
      edges:
        - {id: fell, from: up, to: down, when: {index: best, below: 20}}
        - {id: rose, from: down, to: up, when: {index: best, at_least: 20}}
    share:
      stages: {up: {index: share}, down: {index: share}}
      initial: [{stage: up, when: {index: share, at_least: 50}}, {stage: down}]
      edges:
        - {id: fell, from: up, to: down, when: {index: share, below: 50}}
        - {id: rose, from: down, to: up, when: {index: share, at_least: 50}}
    top:
      stages: {up: {index: top}, down: {index: top}}
      initial: [{stage: up, when: {index: top, at_least: 25}}, {stage: down}]
      edges:
        - {id: fell, from: up, to: down, when: {index: top, below: 25}}
        - {id: rose, from: down, to: up, when: {index: top, at_least: 25}}
    used:
      stages: {up: {index: utilisation}, down: {index: utilisation}}
      initial: [{stage: up, when: {index: utilisation, at_least: 50}}, {stage: down}]
      edges:
        - {id: fell, from: up, to: down, when: {index: utilisation, below: 50}}
        - {id: rose, from: down, to: up, when: {index: utilisation, at_least: 50}}
"""


def test_each_level_crosses_at_the_first_millisecond_the_reference_sees_it_below() -> None:
    """Four members decaying at different rates: every account lifecycle falls at the first
    millisecond at which the independent reference finds its level below the edge's level."""
    import yaml

    from engagement_index.core.timestamps import parse_timestamp_ms

    model = parse_model(yaml.safe_load(DECAYING))
    replayer = Replayer(model)
    reference = AccountReference(DECAYING)
    lines = [f'{{"event_id": "l", "tenant": "acme", "contact_id": "crm", "type": '
             f'"account.licences", "timestamp": "{snapshot_time(NOW)}", "account_id": '
             f'"{ACCOUNT}", "properties": {{"licences": 4}}}}']  # fmt: skip
    plan = [
        ("m1", "x.p", 5),
        ("m1", "x.q", 2),
        ("m2", "x.p", 3),
        ("m3", "x.q", 9),
        ("m4", "x.p", 1),
    ]
    for n, (member, etype, count) in enumerate(plan):
        for i in range(count):
            at = NOW + n * 3_600_000 + i * 60_000
            lines.append(
                f'{{"event_id": "{member}-{n}-{i}", "tenant": "acme", "contact_id": "{member}", '
                f'"type": "{etype}", "timestamp": "{snapshot_time(at)}", '
                f'"account_id": "{ACCOUNT}"}}'
            )
    for line in lines:
        replayer.feed(line)
        reference.feed(line)
    assert not replayer.rejects
    replayer.finish(NOW + 60 * 86_400_000)
    falls = {t.lifecycle: t for t in replayer.account_transitions if t.rule_id == "fell"}
    assert {t.reason for t in falls.values()} == {"decay"}, "each fell by time, not on an update"
    assert {t.lifecycle for t in replayer.account_transitions if t.rule_id == "rose"} == set(falls)
    assert set(falls) == {"best", "share", "top", "used"}
    names = {"best": ("best", 20.0), "share": ("share", 50.0), "top": ("top", 25.0),
             "used": ("utilisation", 50.0)}  # fmt: skip
    for lifecycle, (level, threshold) in names.items():
        at = parse_timestamp_ms(falls[lifecycle].occurred_at)
        assert reference.levels(TENANT, ACCOUNT, at - 1)[level] >= threshold, lifecycle
        assert reference.levels(TENANT, ACCOUNT, at)[level] < threshold, lifecycle
