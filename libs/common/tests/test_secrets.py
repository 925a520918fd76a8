"""Tenant secrets are sealed with AES-GCM and bound to their owner and field."""

from __future__ import annotations

import pytest
from waflow_common.secrets import (
    SecretBox,
    SecretDecryptionError,
    SecretsKeyError,
    generate_key,
    hash_api_key,
    new_api_key,
)


def test_seal_and_open_round_trip_without_clear_text() -> None:
    box = SecretBox(generate_key())
    sealed = box.seal("EAAG-access-token", context="tenant:acme:access_token")
    assert "EAAG" not in sealed
    assert sealed != box.seal("EAAG-access-token", context="tenant:acme:access_token")  # fresh nonce each time
    assert box.open(sealed, context="tenant:acme:access_token") == "EAAG-access-token"


def test_a_secret_cannot_be_moved_to_another_owner_or_opened_with_another_key() -> None:
    box = SecretBox(generate_key())
    sealed = box.seal("s", context="tenant:acme:access_token")
    with pytest.raises(SecretDecryptionError):
        box.open(sealed, context="tenant:evil:access_token")
    with pytest.raises(SecretDecryptionError):
        SecretBox(generate_key()).open(sealed, context="tenant:acme:access_token")
    with pytest.raises(SecretDecryptionError):
        box.open("plain", context="tenant:acme:access_token")


@pytest.mark.parametrize("key", ["", "not base64!", "c2hvcnQ="])
def test_bad_keys_are_refused_clearly(key: str) -> None:
    with pytest.raises(SecretsKeyError):
        SecretBox(key)


def test_api_keys_are_random_and_stored_as_sha256() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b
    assert len(hash_api_key(a)) == 64
    assert hash_api_key(a) == hash_api_key(a)
