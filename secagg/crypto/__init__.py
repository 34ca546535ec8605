"""Cryptographic primitives of secagg: X25519 + HKDF-SHA256 key agreement
(:mod:`secagg.crypto.keys`), AES-256-GCM share encryption (:mod:`secagg.crypto.aead`) and
the AES-128-CTR mask PRG (:mod:`secagg.crypto.prg`)."""

from __future__ import annotations

from secagg.crypto.aead import OVERHEAD, associated_data, decrypt, encrypt
from secagg.crypto.keys import (
    KEY_SIZE,
    LABEL_MASK,
    LABEL_SHARE,
    PROTOCOL_VERSION,
    agree,
    agree_many,
    derive,
    derive_info,
    generate_keypair,
    generate_private_key,
    hkdf_sha256,
    public_key,
)
from secagg.crypto.prg import SEED_SIZE, Masker, expand, keystream

__all__ = [
    "KEY_SIZE",
    "LABEL_MASK",
    "LABEL_SHARE",
    "OVERHEAD",
    "PROTOCOL_VERSION",
    "SEED_SIZE",
    "Masker",
    "agree",
    "agree_many",
    "associated_data",
    "decrypt",
    "derive",
    "derive_info",
    "encrypt",
    "expand",
    "generate_keypair",
    "generate_private_key",
    "hkdf_sha256",
    "keystream",
    "public_key",
]
