"""API keys: who is calling. Off when API_KEYS is empty (the embedded demo), on in compose.

A client sends its key as `Authorization: Bearer KEY` or `X-API-Key: KEY`. The configuration holds
only each key's SHA-256, by owner name (`API_KEYS=alice:<hex>,bob:<hex>`), so a leaked configuration
leaks no key; keys are long random tokens, for which one plain hash is enough. The presented key is
hashed and compared with every stored hash in constant time, so the answer's timing tells nothing
about how close a guess was. `python -m service.auth NAME` makes a new key and its entry.
"""

import hashlib
import hmac
import re
import secrets
import sys

from fastapi import Request

from service.errors import ApiError

OWNER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
ENTRY = re.compile(rf"^({OWNER_PATTERN}):(?:sha256:)?([0-9a-fA-F]{{64}})$")


class KeyConfigError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_keys(value: str) -> dict[str, bytes]:
    """`owner:sha256hex` entries, comma or whitespace separated -> {owner: digest}."""
    keys: dict[str, bytes] = {}
    for entry in re.split(r"[,\s]+", value.strip()):
        if not entry:
            continue
        match = ENTRY.match(entry)
        if match is None:
            raise KeyConfigError(f"API_KEYS: {entry[:20]!r}... is not owner:<64 hex digits of SHA-256>")
        keys[match.group(1)] = bytes.fromhex(match.group(2))
    return keys


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="animate"'})


def owner_of(key: str | None, keys: dict[str, bytes]) -> str | None:
    """The owner whose stored hash matches `key`; every entry is compared, in constant time."""
    if key is None:
        return None
    digest = hashlib.sha256(key.encode("utf-8", "replace")).digest()
    found = None
    for owner, stored in keys.items():
        if hmac.compare_digest(digest, stored):
            found = owner
    return found


def caller(request: Request) -> str | None:
    """FastAPI dependency: the calling key's owner; None when keys are off; 401 without a valid key."""
    keys: dict[str, bytes] = request.app.state.context.api_keys
    if not keys:
        return None
    key = _presented_key(request)
    if key is None:
        raise _unauthorized("an API key is required: Authorization: Bearer KEY, or X-API-Key: KEY")
    owner = owner_of(key, keys)
    if owner is None:
        raise _unauthorized("the API key is not valid")
    return owner


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not re.fullmatch(OWNER_PATTERN, argv[0]):
        print("usage: python -m service.auth OWNER   (letters, digits, . _ -)", file=sys.stderr)
        return 2
    key = secrets.token_urlsafe(32)
    print(f"key (give it to {argv[0]}; it is not stored): {key}")
    print(f"API_KEYS entry: {argv[0]}:{hash_key(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
