"""Encryption of tenant secrets (app secret, verify token, access token) for transport and rest (AES-GCM)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets as _random

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "v1:"


class SecretsKeyError(ValueError):
    """The secrets key is missing or malformed."""


class SecretDecryptionError(ValueError):
    """A ciphertext was not made with this key (or was tampered with)."""


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


class SecretBox:
    """Seals and opens secrets with one AEAD key; the associated data binds a secret to its owner and field."""

    def __init__(self, key_b64: str) -> None:
        try:
            key = base64.urlsafe_b64decode(key_b64.encode())
        except ValueError as exc:
            raise SecretsKeyError("WAFLOW_SECRETS_KEY is not base64") from exc
        if len(key) != 32:
            raise SecretsKeyError("WAFLOW_SECRETS_KEY must be base64 of 32 bytes (make run generates one)")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, ciphertext: str, *, context: str) -> str:
        if not ciphertext.startswith(_PREFIX):
            raise SecretDecryptionError("unknown secret format")
        raw = base64.urlsafe_b64decode(ciphertext[len(_PREFIX) :].encode())
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except InvalidTag as exc:
            raise SecretDecryptionError(f"cannot decrypt secret for {context}") from exc


def new_api_key() -> str:
    return "wf_" + _random.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()
