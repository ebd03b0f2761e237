"""Passwords and JSON Web Tokens for the embedded server.

Passwords are stored as salted scrypt hashes (standard library), never in
clear. Tokens are HS256 JWTs (PyJWT) signed with a key generated once and kept
in the data directory with mode 0600, so tokens survive a restart. Each token
carries ``token_type`` so that an access token is refused where a refresh
token is wanted, and the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from ..logs import get_logger

log = get_logger("ufdl_node.server")

ALGORITHM = "HS256"
# A user pk is a positive SQLite integer: a signed token naming anything else names no user.
MAX_USER_PK = 2**63 - 1
KEY_FILE = "jwt-signing.key"
# scrypt cost: about 16 MiB and tens of milliseconds per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Verified tokens kept, so that a fleet's requests skip the signature check: bounded
# (the oldest entry goes first), each until its own expiry.
VERIFIED_TOKENS_MAX = 4096


class TokenInvalid(Exception):
    """The token is malformed, forged, expired or of the wrong type."""


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


# Checked against when the user does not exist, so that the answer takes as long.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches `stored` (an unknown user passes None)."""
    candidate = stored or _DUMMY_HASH
    try:
        scheme, n, r, p, salt, digest = candidate.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                                  r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest)) and stored is not None


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def load_signing_key(data_dir: Path) -> bytes:
    """The signing key of this data directory, created (mode 0600) on first use."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        # O_EXCL: two servers started at once on one directory must not both write a key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    if len(key) < 32:
        raise RuntimeError(f"{path} is too short to be a signing key; remove it to make a new one")
    if path.stat().st_mode & 0o077:
        log.warning("the signing key can be read by other users; run: chmod 600 " + str(path))
    return key


@dataclass(frozen=True)
class TokenIssuer:
    key: bytes
    access_lifetime_s: float
    refresh_lifetime_s: float
    # token -> (token_type, user pk, exp): the claims of a token whose signature was checked.
    # Only the signature and claims are cached; the caller still reads the user on every
    # request, so a deleted or changed user is refused at once.
    _verified: dict[str, tuple[str, int, float]] = field(default_factory=dict, compare=False, repr=False)

    def _issue(self, user_pk: int, token_type: str, lifetime_s: float) -> str:
        now = time.time()
        claims = {"token_type": token_type, "user_id": user_pk, "iat": int(now),
                  "exp": int(now + lifetime_s), "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def access(self, user_pk: int) -> str:
        return self._issue(user_pk, "access", self.access_lifetime_s)

    def refresh(self, user_pk: int) -> str:
        return self._issue(user_pk, "refresh", self.refresh_lifetime_s)

    def verify(self, token: str, token_type: str) -> int:
        """The user pk that `token` names; TokenInvalid unless it is a valid `token_type` token."""
        known = self._verified.get(token)
        if known is not None and known[0] == token_type and time.time() < known[2]:
            return known[1]
        try:
            claims = jwt.decode(token, self.key, algorithms=[ALGORITHM],
                                options={"require": ["exp", "token_type", "user_id"]})
        except jwt.PyJWTError:
            raise TokenInvalid("Token is invalid or expired") from None
        user = claims.get("user_id")
        if claims.get("token_type") != token_type:
            raise TokenInvalid("Token has wrong type")
        if not isinstance(user, int) or isinstance(user, bool) or not 0 < user <= MAX_USER_PK:
            raise TokenInvalid("Token names no possible user")
        exp = claims["exp"]
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            if len(self._verified) >= VERIFIED_TOKENS_MAX:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (token_type, user, float(exp))
        return user
