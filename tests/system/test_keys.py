"""API keys from the command line, against the running PostgreSQL stack: list them, revoke
one, and the API refuses it within `key_cache_s` while other keys keep working."""

from __future__ import annotations

import time

from app.config import Settings
from tests.system.processes import run_cli
from tests.system.stack import Stack


def keys(stack: Stack, *args: str) -> list[list[str]]:
    out = run_cli("keys", "list", *args, env=stack.env)
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_a_revoked_key_is_refused_and_other_keys_still_work(pg_stack: Stack) -> None:
    key = pg_stack.new_key("revocable")
    listed = keys(pg_stack, "--tenant", "revocable")
    assert [row[1:3] for row in listed] == [["revocable", key[:12] + "..."]]  # the key itself is never shown
    with pg_stack.api(key) as api, pg_stack.api() as other:
        assert api.http.get("/v1/jobs").status_code == 200
        revoked = run_cli("keys", "revoke", listed[0][2], env=pg_stack.env)  # by the prefix `list` printed
        assert revoked.returncode == 0 and listed[0][0] in revoked.stdout, revoked.stderr
        assert keys(pg_stack, "--tenant", "revocable") == []
        deadline = time.monotonic() + Settings().key_cache_s + 5
        while (r := api.http.get("/v1/jobs")).status_code == 200:
            assert time.monotonic() < deadline, "the revoked key still works after the key cache's TTL"
            time.sleep(0.5)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert other.http.get("/v1/jobs").status_code == 200


def test_revoking_an_unknown_key_fails_and_names_it(pg_stack: Stack) -> None:
    out = run_cli("keys", "revoke", "key_doesnotexist", env=pg_stack.env)
    assert out.returncode == 1 and "key_doesnotexist" in out.stderr
