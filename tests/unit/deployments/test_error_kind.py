"""Request-path log lines name a failure's kind and never carry its message (which may quote the client)."""

from __future__ import annotations

from deployments.error_kind import error_kind


def test_the_kind_of_an_error_and_its_cause_without_their_messages():
    secret = "my-secret-prompt"
    try:
        try:
            raise ValueError(f"bad stop string {secret!r}")
        except ValueError as inner:
            raise RuntimeError(f"render failed: {inner}") from inner
    except RuntimeError as exc:
        line = error_kind(exc)
    assert line == "RuntimeError from ValueError"
    assert secret not in line
    assert error_kind(KeyError(secret)) == "KeyError"
