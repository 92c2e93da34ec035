"""Webhooks: when a job reaches a terminal state, POST its resource to the job's `webhook_url`.

Signed as Standard Webhooks do: `webhook-id` (one per job, the same on every retry),
`webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`: `v1,` + base64 of
HMAC-SHA256 over `id.timestamp.body` with WEBHOOK_SECRET (`whsec_` + base64, or any other string
taken as its UTF-8 bytes). A receiver checks the signature and that the timestamp is recent.

Whoever ends a job (the worker, the API on a cancel, the lost-job pass) schedules the delivery in a
Redis sorted set (job id by due time); the API processes deliver, each claiming an entry by removing
it, so any number of them share the work and a restart loses nothing. A failed attempt (no answer,
or not 2xx; redirects are not followed) is retried WEBHOOK_RETRIES times, 1, 2, 4... seconds times
WEBHOOK_BACKOFF apart.

A URL is taken in one canonical form: an internationalised host name is encoded with IDNA (UTS 46
mapping, as browsers do) and then checked like any other, and spaces or control characters refuse
the URL; what is stored and delivered is that form. A delivery that fails in a way nothing here
foresaw is logged and counted as a failed attempt: one bad webhook never stops the others.

No SSRF: only http and https, and every address the host resolves to must be public (not private,
loopback, link-local, multicast or reserved) unless WEBHOOK_ALLOW_PRIVATE. The check is made when the
job is submitted and again at each attempt, and the connection goes to the address that was checked
(the Host header and TLS name stay the URL's), so DNS that changes its answer cannot redirect it.
"""

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx
import idna
import redis
from redis import Redis
from starlette.concurrency import run_in_threadpool

from contract.outcomes import WEBHOOKS_DUE_KEY as DUE_KEY
from contract.outcomes import schedule_webhook as schedule
from service.errors import ApiError

ATTEMPTS_KEY = "animate:webhooks:attempts"
MAX_URL_LENGTH = 2048
DELIVERY_TIMEOUT = 10.0
NOT_FINISHED_DELAY = 1.0  # the job's final state is being written: look again shortly
POLL_INTERVAL = 0.5
log = logging.getLogger("service.webhooks")


class WebhookRefused(ValueError):
    pass


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _ascii_host(host: str) -> str:
    """The host as it goes on the wire: an IP address as is, a name in IDNA's ASCII form."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return host
    except ValueError:
        pass
    try:
        return idna.encode(host, uts46=True).decode("ascii") if not host.isascii() else host
    except idna.IDNAError as exc:
        raise WebhookRefused(f"the host is not a valid internationalised domain name ({exc})") from None


def canonical_url(url: str) -> str:
    """The http(s) URL with its host in ASCII; WebhookRefused for anything else."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise WebhookRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("only http and https URLs are accepted")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise WebhookRefused("the URL must name a host, without credentials")
    host = _ascii_host(parts.hostname)
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{port}" if port is not None else host))


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, ASCII host, port) of an http(s) URL; WebhookRefused otherwise."""
    parts = urlsplit(canonical_url(url))
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The host's addresses, all checked; WebhookRefused when it does not resolve or one is private."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"the host does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(entry[4][0] for entry in found))
    if not allow_private:
        for address in addresses:
            if not _public(address):
                raise WebhookRefused(f"{host} resolves to a private, loopback or link-local address")
    return addresses


def check_url(url: str, allow_private: bool) -> str:
    """The URL in its canonical form, when a webhook may be sent there; 422 naming the field otherwise."""
    try:
        canonical = canonical_url(url)
        _, host, port = parse_url(canonical)
        resolve(host, port, allow_private)
    except WebhookRefused as exc:
        raise ApiError(422, "invalid_field", f"webhook_url: {exc}", field="webhook_url") from None
    return canonical


def pinned_request(url: str, address: str) -> tuple[str, dict[str, str], dict]:
    """The URL rewritten to connect to `address`, the Host header and the TLS name it keeps."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1]}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), headers, extensions


class Dispatcher:
    """Delivers due webhooks; run by each API process (`run()` until canceled)."""

    def __init__(
        self,
        client: Redis,
        describe_job: Callable[[str], tuple[bytes, str, bool] | None],
        secret: str,
        retries: int,
        backoff: float,
        allow_private: bool,
    ):
        self.redis = client
        self.describe_job = describe_job  # job id -> (resource JSON, webhook URL, finished) or None
        self.key = secret_key(secret)
        self.retries = retries
        self.backoff = backoff
        self.allow_private = allow_private

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT, follow_redirects=False) as http:
            while True:
                try:
                    for job_id in await run_in_threadpool(self._claim_due):
                        await self._attempt(http, job_id)
                except redis.exceptions.RedisError as exc:
                    log.warning("webhook deliveries paused: %s", exc)
                except Exception:
                    log.exception("webhook dispatcher error; going on")
                await asyncio.sleep(POLL_INTERVAL)

    def _claim_due(self) -> list[str]:
        due = self.redis.zrangebyscore(DUE_KEY, 0, time.time(), start=0, num=20)
        return [job_id.decode() for job_id in due if self.redis.zrem(DUE_KEY, job_id)]

    async def _attempt(self, http: httpx.AsyncClient, job_id: str) -> None:
        found = await run_in_threadpool(self.describe_job, job_id)
        if found is None:
            return
        body, url, finished = found
        if not finished:
            await run_in_threadpool(schedule, self.redis, job_id, NOT_FINISHED_DELAY)
            return
        attempt = int(await run_in_threadpool(self.redis.hincrby, ATTEMPTS_KEY, job_id, 1))
        extra = {"job_id": job_id, "attempt": attempt}
        try:
            url = canonical_url(url)
            _, host, port = parse_url(url)
            addresses = await run_in_threadpool(resolve, host, port, self.allow_private)
            target, headers, extensions = pinned_request(url, addresses[0])
            message_id = f"msg_{job_id}"
            timestamp = int(time.time())
            headers |= {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self.key, message_id, timestamp, body),
            }
            response = await http.post(target, content=body, headers=headers, extensions=extensions)
            if 200 <= response.status_code < 300:
                log.info("webhook delivered", extra=extra)
                await run_in_threadpool(self.redis.hdel, ATTEMPTS_KEY, job_id)
                return
            reason = f"answered {response.status_code}"
        except WebhookRefused as exc:
            log.warning("webhook refused: %s", exc, extra=extra)
            await run_in_threadpool(self.redis.hdel, ATTEMPTS_KEY, job_id)
            return
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        except Exception as exc:  # unforeseen: this attempt failed, the dispatcher goes on
            log.exception("webhook attempt failed unexpectedly", extra=extra)
            reason = type(exc).__name__
        if attempt > self.retries:
            log.warning("webhook given up after %d attempts: %s", attempt, reason, extra=extra)
            await run_in_threadpool(self.redis.hdel, ATTEMPTS_KEY, job_id)
            return
        delay = self.backoff * 2 ** (attempt - 1)
        log.info("webhook attempt failed (%s); next in %.1f s", reason, delay, extra=extra)
        await run_in_threadpool(schedule, self.redis, job_id, delay)
