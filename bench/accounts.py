"""The cost of an account update and the bytes of an account, by account size (no broker).

    .venv/bin/python bench/accounts.py [--members 100 1000] [--updates 20]

For each size: an account of ``b2b-qualification.yaml`` with that many members (each with 1-6
random events of the last 20 days, licences half the members), then ``--updates`` events of one
member, each folded into the member's state and applied to the account
(``core.accounts.apply``: the levels and the due time solved again), timed per update; the
encoded account's bytes and the time to decode it (once per batch in the worker). Pure core,
one process; figures in docs/streaming.md#accounts.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from engagement_index.core.accounts import (
    JOIN,
    LICENCES,
    AccountUpdate,
    apply,
    decode_account,
    encode_account,
)
from engagement_index.core.events import ContactKey, EventFields
from engagement_index.core.lifecycle import step
from engagement_index.core.model import load_model

MODEL = Path(__file__).resolve().parents[1] / "config" / "models" / "b2b-qualification.yaml"
T = 1_790_000_000_000
DAY = 86_400_000
TYPES = ("web.form_submit", "email.click", "web.page_view")


def measure(members: int, updates: int) -> dict[str, float]:
    model = load_model(MODEL)
    acc = model.accounts_compiled
    assert acc is not None
    cm = model.compiled
    rng = random.Random(1)
    account, _ = apply(
        None, AccountUpdate(LICENCES, "acme", "a", T, "l", licences=members // 2), acc
    )
    first = None
    for i in range(members):
        state = None
        for j in range(rng.randint(1, 6)):
            at = T - rng.randint(0, 20 * DAY)
            fields = EventFields(f"e{i}-{j}", "acme", f"c{i}", rng.choice(TYPES), at, "a")
            state, _ = step(state, fields, cm)
        assert state is not None
        update = AccountUpdate(JOIN, "acme", "a", state.clock_ms, f"x{i}", f"c{i}",
                               state.events_counted, state)  # fmt: skip
        account, _ = apply(account, update, acc)
        first = first or state
    assert first is not None
    state = first
    started = time.perf_counter()
    for j in range(updates):
        state, _ = step(state, EventFields(f"z{j}", "acme", "c0", "email.click", T + j, "a"), cm)
        update = AccountUpdate(JOIN, "acme", "a", state.clock_ms, f"z{j}", "c0",
                               state.events_counted, state)  # fmt: skip
        account, _ = apply(account, update, acc)
    per_update = (time.perf_counter() - started) / updates
    assert account is not None
    raw = encode_account(account)
    started = time.perf_counter()
    decode_account(raw, ContactKey("acme", "a"))
    return {"ms_per_update": per_update * 1000, "bytes": len(raw),
            "decode_ms": (time.perf_counter() - started) * 1000}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    for members in args.members:
        result = measure(members, args.updates)
        print(f"{members:>6} members: {result['ms_per_update']:8.1f} ms per member update, "
              f"{result['bytes']:>9,} bytes, decode {result['decode_ms']:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
