"""AWS adapters for the audit anchors (bot.anchors): a KMS asymmetric signing key and an
S3 bucket with Object Lock in compliance mode.

KMS: checkpoints are signed with kms:Sign (the private key never leaves KMS). They are
verified locally against the key's public key (kms:GetPublicKey, read once), so `audit
verify` makes one KMS call however many checkpoints there are; a signature that verifies
with the public key is exactly one kms:Verify would accept.

S3: one object per checkpoint under `checkpoints/`, named by its zero-padded sequence
number (so listing returns them in chain order), each written with Object Lock in
COMPLIANCE mode and a retain-until date: nobody, the bucket owner and root included, can
delete or overwrite that version before then. `check()` refuses a bucket without Object
Lock enabled, at start.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from bot.anchors import AnchorError, SignedCheckpoint, StoredAnchor
from bot.aws.errors import error_code

log = logging.getLogger(__name__)

# Preferred first. ECDSA needs an ECC_NIST_P256 key; the RSA schemes any RSA_* key.
SUPPORTED_ALGORITHMS = ("ECDSA_SHA_256", "RSASSA_PSS_SHA_256", "RSASSA_PKCS1_V1_5_SHA_256")
CHECKPOINT_PREFIX = "checkpoints/"


def _fault(what: str, exc: Exception) -> AnchorError:
    code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return AnchorError(f"{what}: {code}: {exc}")


class KmsSigner:
    """bot.anchors.CheckpointSigner over an AWS KMS asymmetric SIGN_VERIFY key."""

    def __init__(self, kms: Any, key_id: str) -> None:
        self._kms = kms
        self._configured_id = key_id
        self._key_arn: str | None = None
        self._algorithm: str | None = None
        self._public: Any = None

    def check(self) -> None:
        """Resolve the key and its public key; AnchorError unless it can sign checkpoints."""
        if self._public is not None:
            return
        try:
            described = self._kms.describe_key(KeyId=self._configured_id)["KeyMetadata"]
        except (ClientError, BotoCoreError) as exc:
            raise _fault(f"audit.kms_key_id {self._configured_id}", exc) from None
        if described.get("KeyUsage") != "SIGN_VERIFY":
            raise AnchorError(f"audit.kms_key_id {self._configured_id}: key usage is "
                              f"{described.get('KeyUsage')}, not SIGN_VERIFY; create an "
                              "asymmetric signing key (ECC_NIST_P256)")
        if described.get("KeyState") != "Enabled":
            raise AnchorError(f"audit.kms_key_id {self._configured_id}: key is "
                              f"{described.get('KeyState')}, not Enabled")
        offered = described.get("SigningAlgorithms") or []
        algorithm = next((a for a in SUPPORTED_ALGORITHMS if a in offered), None)
        if algorithm is None:
            raise AnchorError(f"audit.kms_key_id {self._configured_id}: offers "
                              f"{', '.join(offered) or 'no signing algorithm'}; need one of "
                              f"{', '.join(SUPPORTED_ALGORITHMS)}")
        try:
            der = self._kms.get_public_key(KeyId=described["Arn"])["PublicKey"]
        except (ClientError, BotoCoreError) as exc:
            raise _fault(f"audit.kms_key_id {self._configured_id}: kms:GetPublicKey", exc
                         ) from None
        self._public = serialization.load_der_public_key(der)
        self._key_arn, self._algorithm = str(described["Arn"]), algorithm

    @property
    def key_id(self) -> str:
        self.check()
        assert self._key_arn is not None
        return self._key_arn

    @property
    def algorithm(self) -> str:
        self.check()
        assert self._algorithm is not None
        return self._algorithm

    def sign(self, payload: bytes) -> bytes:
        self.check()
        try:
            response = self._kms.sign(KeyId=self.key_id, Message=payload, MessageType="RAW",
                                      SigningAlgorithm=self.algorithm)
        except (ClientError, BotoCoreError) as exc:
            raise _fault(f"kms:Sign with {self.key_id}", exc) from None
        signature: bytes = response["Signature"]
        return signature

    def verify(self, payload: bytes, signature: bytes) -> bool:
        self.check()
        return _verify(self._public, self.algorithm, payload, signature)


def _verify(public: Any, algorithm: str, payload: bytes, signature: bytes) -> bool:
    """Locally, with the KMS key's public key: what kms:Verify would answer."""
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            scheme: padding.AsymmetricPadding = (
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                            salt_length=padding.PSS.DIGEST_LENGTH)
                if algorithm.startswith("RSASSA_PSS") else padding.PKCS1v15())
            public.verify(signature, payload, scheme, hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


class KmsVerifier:
    """bot.anchors.CheckpointVerifier for a retired KMS key (`audit.previous_keys`): its
    public key (kms:GetPublicKey, read once) verifies the checkpoints it signed. The key
    need not be allowed to sign any more, but it must still exist and be readable: AWS
    refuses GetPublicKey for a disabled key or one pending deletion."""

    def __init__(self, kms: Any, key_arn: str) -> None:
        self._kms = kms
        self._key_arn = key_arn
        self._algorithm: str | None = None
        self._public: Any = None

    def check(self) -> None:
        """AnchorError naming the key unless its public key can be read."""
        if self._public is not None:
            return
        setting = f"audit.previous_keys {self._key_arn}"
        try:
            response = self._kms.get_public_key(KeyId=self._key_arn)
        except (ClientError, BotoCoreError) as exc:
            raise _fault(f"{setting}: kms:GetPublicKey", exc) from None
        if response.get("KeyUsage") != "SIGN_VERIFY":
            raise AnchorError(f"{setting}: key usage is {response.get('KeyUsage')}, not "
                              "SIGN_VERIFY: it never signed checkpoints")
        offered = response.get("SigningAlgorithms") or []
        # The same choice KmsSigner made while the key was the signing key.
        algorithm = next((a for a in SUPPORTED_ALGORITHMS if a in offered), None)
        if algorithm is None:
            raise AnchorError(f"{setting}: offers {', '.join(offered) or 'no signing algorithm'}"
                              f"; checkpoints are signed with one of "
                              f"{', '.join(SUPPORTED_ALGORITHMS)}")
        self._public = serialization.load_der_public_key(response["PublicKey"])
        self._algorithm = algorithm

    @property
    def key_id(self) -> str:
        return self._key_arn

    def verify(self, payload: bytes, signature: bytes) -> bool:
        self.check()
        assert self._algorithm is not None
        return _verify(self._public, self._algorithm, payload, signature)


class S3AnchorStore:
    """bot.anchors.AnchorReader over an S3 bucket with Object Lock (compliance mode)."""

    def __init__(self, s3: Any, bucket: str, *, retention: timedelta,
                 prefix: str = CHECKPOINT_PREFIX) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.retention = retention
        self.prefix = prefix

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def check(self) -> None:
        """AnchorError unless the bucket exists and has Object Lock enabled."""
        try:
            config = self._s3.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = error_code(exc)
            if code == "ObjectLockConfigurationNotFoundError":
                raise AnchorError(
                    f"audit.anchor_bucket {self.bucket}: Object Lock is not enabled; create "
                    "the bucket with Object Lock (it cannot be added to a bucket without "
                    "versioning) so checkpoints cannot be deleted") from None
            raise _fault(f"audit.anchor_bucket {self.bucket}", exc) from None
        except BotoCoreError as exc:
            raise _fault(f"audit.anchor_bucket {self.bucket}", exc) from None
        lock = config.get("ObjectLockConfiguration") or {}
        if lock.get("ObjectLockEnabled") != "Enabled":
            raise AnchorError(f"audit.anchor_bucket {self.bucket}: Object Lock is not enabled")

    def key_for(self, signed: SignedCheckpoint) -> str:
        return f"{self.prefix}{signed.checkpoint.seq:020d}.json"

    def put(self, signed: SignedCheckpoint) -> None:
        body = signed.to_json().encode()
        retain_until = signed.checkpoint.at.astimezone(UTC) + self.retention
        try:
            self._s3.put_object(
                Bucket=self.bucket, Key=self.key_for(signed), Body=body,
                ContentType="application/json",
                ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=retain_until,
                # Object Lock writes need an integrity checksum.
                ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(body).hexdigest()},
            )
        except (ClientError, BotoCoreError) as exc:
            raise _fault(f"writing checkpoint {signed.checkpoint.seq} to {self.name}", exc
                         ) from None

    def _keys(self) -> list[str]:
        keys: list[str] = []
        try:
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                keys.extend(str(item["Key"]) for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _fault(f"listing {self.name}", exc) from None
        return sorted(keys)

    def _read(self, key: str) -> StoredAnchor:
        location = f"s3://{self.bucket}/{key}"
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _fault(f"reading {location}", exc) from None
        try:
            return StoredAnchor(location, SignedCheckpoint.from_json(body))
        except AnchorError as exc:
            return StoredAnchor(location, None, str(exc))

    def list(self) -> list[StoredAnchor]:
        return [self._read(key) for key in self._keys()]

    def latest(self) -> SignedCheckpoint | None:
        for key in reversed(self._keys()):
            found = self._read(key)
            if found.signed is not None:
                return found.signed
        return None

