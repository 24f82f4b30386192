"""Bearer tokens of the query API: digests only, scoped to tenants."""

from __future__ import annotations

from pathlib import Path

import pytest

from engagement_index.errors import ConfigError
from engagement_index.stream.auth import (
    ApiTokens,
    TokenAuth,
    Unauthorized,
    load_tokens,
    new_token,
    token_digest,
)

ACME = "token-for-acme"
ADMIN = "token-for-everyone"


def make_auth() -> TokenAuth:
    return TokenAuth(
        ApiTokens(tokens={token_digest(ACME): ["acme", "initech"], token_digest(ADMIN): ["*"]})
    )


def test_a_token_reads_only_its_tenants() -> None:
    auth = make_auth()
    tenants = auth.tenants(f"Bearer {ACME}")
    assert tenants == {"acme", "initech"}
    assert TokenAuth.may_read(tenants, "acme")
    assert not TokenAuth.may_read(tenants, "globex")
    everyone = auth.tenants(f"bearer  {ADMIN} ")
    assert TokenAuth.may_read(everyone, "globex")


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {ACME}", f"{ACME}", "Bearer wrong", f"Bearer {ACME}x"],
)
def test_missing_or_invalid_tokens_are_refused(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        make_auth().tenants(header)


def test_no_tokens_configured_refuses_everything() -> None:
    auth = TokenAuth(ApiTokens())
    assert len(auth) == 0
    with pytest.raises(Unauthorized):
        auth.tenants(f"Bearer {ACME}")


def test_the_configuration_holds_digests_never_tokens(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="digest"):
        load_tokens(None, {ACME: ["acme"]})
    with pytest.raises(ConfigError, match="tenant"):
        load_tokens(None, {token_digest(ACME): ["not a tenant"]})
    with pytest.raises(ConfigError, match="at least one tenant"):
        load_tokens(None, {token_digest(ACME): []})
    file = tmp_path / "tokens.yaml"
    file.write_text(f'tokens:\n  "{token_digest(ACME)}": [acme]\n')
    merged = load_tokens(file, {token_digest(ADMIN): ["*"]})
    assert merged.tokens == {token_digest(ACME): ["acme"], token_digest(ADMIN): ["*"]}
    assert ACME not in file.read_text()
    file.write_text("tokens: {oops: [acme]}\n")
    with pytest.raises(ConfigError, match=str(file)):
        load_tokens(file, {})


def test_new_tokens_are_random_and_long() -> None:
    a, b = new_token(), new_token()
    assert a != b
    assert len(a) >= 40
    assert token_digest(a).startswith("sha256:")
    assert len(token_digest(a)) == 71
