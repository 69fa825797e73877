"""A local Ed25519 checkpoint signer (bot.anchors.CheckpointSigner) for small installs and
the demo: the private key lives in `audit.signing_key_file` (PEM, PKCS#8), which must be
kept off the database host and out of the database administrator's reach, or the anchors
prove nothing. `connect-access audit keygen PATH` writes one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bot.anchors import AnchorError

ALGORITHM = "ED25519"


def ed25519_key_id(public: Ed25519PublicKey) -> str:
    """Names the key without revealing anything: a fingerprint of the public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


class Ed25519Verifier:
    """bot.anchors.CheckpointVerifier for a retired Ed25519 key (`audit.previous_keys`):
    only its public key is kept, so checkpoints it signed still verify."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._public = public_key
        self._key_id = ed25519_key_id(public_key)

    @classmethod
    def from_file(cls, path: Path) -> Ed25519Verifier:
        """AnchorError naming the file unless it holds an Ed25519 public key in PEM."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AnchorError(f"cannot read {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise AnchorError(
                f"{path} is not a PEM public key ({exc}); keep only the public half of a "
                "retired key: `openssl pkey -in old.pem -pubout -out old.pub.pem`") from None
        if not isinstance(key, Ed25519PublicKey):
            raise AnchorError(f"{path} holds a {type(key).__name__.removeprefix('_')}, "
                              "not an Ed25519 public key")
        return cls(key)

    @property
    def key_id(self) -> str:
        return self._key_id

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            self._public.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


class Ed25519Signer(Ed25519Verifier):
    """bot.anchors.CheckpointSigner; it verifies what it signed as its public half does."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        super().__init__(private_key.public_key())
        self._private = private_key

    @classmethod
    def from_file(cls, path: Path) -> Ed25519Signer:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AnchorError(f"audit.signing_key_file: cannot read {path}: {exc.strerror}"
                              ) from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise AnchorError(f"audit.signing_key_file: {path} is not an unencrypted PEM "
                              f"private key ({exc}); make one with `connect-access audit "
                              "keygen`") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AnchorError(f"audit.signing_key_file: {path} holds a "
                              f"{type(key).__name__.removeprefix('_')}, not an Ed25519 key")
        return cls(key)

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    def sign(self, payload: bytes) -> bytes:
        return self._private.sign(payload)


def write_new_key(path: Path) -> Ed25519Signer:
    """Create a new Ed25519 key at `path` (mode 0600); refuses to overwrite."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AnchorError(f"{path} exists already; not overwriting a signing key") from None
    except OSError as exc:
        raise AnchorError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return Ed25519Signer(key)
