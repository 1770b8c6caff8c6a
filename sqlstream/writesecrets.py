"""Write secrets at rest: the file holds only their SHA-256.

A secret stream (``create_stream(secret=True)``) takes appends only from callers who
present its write secret. The secret is shown once, when the stream is created; the file
keeps ``streams.write_secret_sha256`` (lowercase hex SHA-256 of the secret's UTF-8
bytes), so reading the file (Datasette, ``sqlstream sql``, the sqlite3 shell, a backup)
does not let anyone write. The secrets are random (144 bits from :func:`new_secret`), so an
unsalted hash cannot be searched back to the secret and keeps ``db.writer(secret)`` a
lookup on the column's unique index. Comparisons go through :func:`matches` (constant
time in the hash). The one place for this rule: the append, seal, import and migration
code all call these functions.
"""

from __future__ import annotations

# hashlib, hmac and secrets (OpenSSL, random) are imported by the functions below, when a
# secret is made or checked, not by every `import sqlstream` (start-up time;
# tests/test_startup.py). After the first call such an import is a dictionary lookup.

__all__ = ["new_secret", "hash_secret", "matches"]


def new_secret() -> str:
    """A random write secret (144 bits, URL-safe) that never starts with ``-``.

    A leading dash would make ``sqlstream append --secret "$S"`` read it as an option.
    """
    import secrets

    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


def hash_secret(secret: str) -> str:
    """What the file stores for ``secret``: the hex SHA-256 of its UTF-8 bytes.

    Any str hashes (a lone surrogate too: it can never match a real secret, which is ASCII).
    """
    import hashlib

    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def matches(stored: object, secret: str | None) -> bool:
    """True when ``secret`` may write a stream whose stored hash is ``stored``.

    ``stored`` is the column as read (a str, or None: a stream without a secret takes
    anyone; any other value matches nothing a hash could). Otherwise the secret's hash
    is compared with ``hmac.compare_digest`` so the time taken does not tell how much of
    it matched.
    """
    if stored is None:
        return True
    if secret is None:
        return False
    if not isinstance(stored, str):
        return False
    import hmac

    return hmac.compare_digest(hash_secret(secret).encode("ascii"), stored.encode("utf-8", "surrogatepass"))
