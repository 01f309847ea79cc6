"""A deployment that says a key is required never serves open: its ingress replicas refuse to start without one."""

from __future__ import annotations

import pydantic
import pytest

from serving.config import environment_read, parse_settings
from serving.ingress import Ingress, MissingApiKey, api_key

KEY_ENV = "QWEN_IMAGE_TEST_REQUIRED_KEY"


def test_server_refuses_open_start_when_key_required(monkeypatch, caplog):
    required = parse_settings({"api_key_env": KEY_ENV, "require_api_key": True})
    assert environment_read(required) == {"Ingress": [KEY_ENV]}
    for unset in (None, ""):  # absent from the replica's environment, or present and empty
        if unset is None:
            monkeypatch.delenv(KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(KEY_ENV, unset)
        with pytest.raises(MissingApiKey, match=KEY_ENV):
            api_key(required)
        # The replica's own constructor (the class Serve's FastAPI wrapper derives from and calls first): the check
        # comes before the tokenizer or the generator's handle are touched, so the replica fails to start.
        replica_class = next(c for c in Ingress.func_or_class.__mro__[1:] if c.__qualname__ == "Ingress")
        with pytest.raises(MissingApiKey, match=KEY_ENV):
            replica_class(required, None)
    monkeypatch.setenv(KEY_ENV, "s3cret")
    assert api_key(required).required

    # Without require_api_key the old behaviour stays for local runs: open, and said so in the log.
    monkeypatch.delenv(KEY_ENV)
    optional = parse_settings({"api_key_env": KEY_ENV})
    assert not optional.require_api_key
    with caplog.at_level("WARNING", logger="serving.ingress"):
        assert not api_key(optional).required
    assert "every route is open" in caplog.text

    # Requiring a key without naming where it is read from is a configuration error, found before any replica.
    with pytest.raises((ValueError, pydantic.ValidationError), match="require_api_key"):
        parse_settings({"api_key_env": None, "require_api_key": True})
