"""Webhooks: when a job reaches a terminal state, POST its resource to the job's `webhook_url`.

Signed as Standard Webhooks do: `webhook-id` (one per job, the same on every retry),
`webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`: `v1,` + base64 of
HMAC-SHA256 over `id.timestamp.body` with WEBHOOK_SECRET (`whsec_` + base64, or any other string
taken as its UTF-8 bytes). A receiver checks the signature and that the timestamp is recent.

Whoever ends a job (the worker, the API on a cancel, the lost-job pass) schedules the delivery in a
Redis sorted set (job id by due time); the API processes deliver, each claiming an entry by removing
it, so any number of them share the work; one that stops puts its deliveries in flight back. A failed
attempt (no answer, or not 2xx; redirects are not followed) is retried WEBHOOK_RETRIES times, 1, 2,
4... seconds times WEBHOOK_BACKOFF apart.

A receiver is as hostile as any client. Each delivery is a task of its own with one deadline for all
of it, WEBHOOK_TIMEOUT_SECONDS from resolving the host to the answer's head (a receiver dribbling a
byte at a time gains nothing), and the answer's body is never read: the connection is dropped once
the status is known, so a huge answer costs the API nothing. A tenant (the job's owner) has at most
WEBHOOK_CONCURRENCY deliveries in flight in one API process, and the process MAX_IN_FLIGHT in all: a
tenant whose receivers are slow or silent delays only its own webhooks.

A URL is taken in one canonical form: an internationalised host name is encoded with IDNA (UTS 46
mapping, as browsers do) and then checked like any other, and spaces or control characters refuse
the URL; what is stored and delivered is that form. A delivery that fails in a way nothing here
foresaw is logged and counted as a failed attempt: one bad webhook never stops the others.

No SSRF: only http and https, and every address the host resolves to must be public unless
WEBHOOK_ALLOW_PRIVATE: not private, loopback, link-local, site-local, multicast, reserved or another
special-purpose range, and an IPv6 form that carries an IPv4 address (mapped, compatible, NAT64,
6to4) is judged as that IPv4 address. The check is made when the job is submitted and again at each
attempt, and the connection goes to the address that was checked (the Host header and TLS name stay
the URL's), so DNS that changes its answer cannot redirect it.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import idna
import redis
from redis import Redis
from starlette.concurrency import run_in_threadpool

from contract.outcomes import WEBHOOKS_DUE_KEY as DUE_KEY
from contract.outcomes import schedule_webhook as schedule
from contract.settings import Settings
from service.errors import ApiError

ATTEMPTS_KEY = "animate:webhooks:attempts"
MAX_URL_LENGTH = 2048
NOT_FINISHED_DELAY = 1.0  # the job's final state is being written: look again shortly
TENANT_BUSY_DELAY = 1.0  # the tenant has WEBHOOK_CONCURRENCY deliveries in flight: look again after this
POLL_INTERVAL = 0.5
MAX_IN_FLIGHT = 64  # deliveries one API process has in flight, every tenant together
CLAIM_BATCH = 20
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


# Where a webhook must never go, beyond what `is_global` says (which differs between Python versions):
# IPv4's special-purpose ranges (RFC 6890 and later; all of 192.0.0.0/24, the 6to4 relay anycast)
# and, within IPv6's global unicast, the IETF protocol assignments (Teredo, benchmarking, ORCHID)
# and documentation.
SPECIAL_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
    )
)
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")  # every other IPv6 block is reserved or local
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the IPv4 in the last 32 bits
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local use (RFC 8215): never public
SIXTOFOUR = ipaddress.ip_network("2002::/16")
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT's IPv4-translated form
COMPATIBLE = ipaddress.ip_network("::/96")  # the deprecated ::a.b.c.d form


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, translated, compatible, NAT64, 6to4)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in SIXTOFOUR:
        return ip.sixtofour
    if any(ip in network for network in (TRANSLATED, COMPATIBLE, NAT64)):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """Whether `address` reaches a public host: an IPv6 form that carries an IPv4 address is judged
    as that IPv4 address, since a NAT64 or 6to4 gateway on the way would deliver it there."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in NAT64_LOCAL:
            return False
        carried = _carried_ipv4(ip)
        if carried is None and ip not in GLOBAL_UNICAST:
            return False
        ip = carried or ip
    special = any(ip in network for network in SPECIAL_NETWORKS if network.version == ip.version)
    return ip.is_global and not ip.is_multicast and not special


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
            if not is_public_address(address):
                raise WebhookRefused(f"{host} resolves to an address that is not public ({address})")
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


@dataclass(frozen=True)
class Webhook:
    """What a due delivery carries: the job resource, its URL, whether the job has ended, its tenant."""

    body: bytes
    url: str
    finished: bool
    tenant: str  # the job's owner; "" where API keys are off


class Dispatcher:
    """Delivers due webhooks, each in a task of its own under a deadline; run by each API process
    (`run()` until canceled). At most `tenant_bound` deliveries of one tenant are in flight at once:
    a tenant whose receivers are slow waits for its own, and the others go on."""

    def __init__(self, client: Redis, describe_job: Callable[[str], Webhook | None], settings: Settings):
        self.redis = client
        self.describe_job = describe_job
        self.key = secret_key(settings.webhook_key or "")
        self.retries = settings.webhook_retries
        self.backoff = settings.webhook_backoff
        self.allow_private = settings.webhook_allow_private
        self.deadline = settings.webhook_timeout_seconds
        self.tenant_bound = settings.webhook_concurrency
        self.in_flight: dict[asyncio.Task, tuple[str, str]] = {}  # task -> (tenant, job id)

    async def run(self) -> None:
        # No connection is kept: an answer's body is never read, so its connection cannot be reused.
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=self.deadline, follow_redirects=False, limits=limits) as http:
            try:
                while True:
                    try:
                        await self._dispatch_due(http)
                    except redis.exceptions.RedisError as exc:
                        log.warning("webhook deliveries paused: %s", exc)
                    except Exception:
                        log.exception("webhook dispatcher error; going on")
                    await asyncio.sleep(POLL_INTERVAL)
            finally:
                await self._hand_back()

    async def _dispatch_due(self, http: httpx.AsyncClient) -> None:
        free = MAX_IN_FLIGHT - len(self.in_flight)
        if free <= 0:
            return
        for job_id in await run_in_threadpool(self._claim_due, min(free, CLAIM_BATCH)):
            try:
                await self._start(http, job_id)
            except Exception:  # claimed but not started: due again shortly, not lost
                log.exception("webhook could not be started", extra={"job_id": job_id})
                with contextlib.suppress(redis.exceptions.RedisError):
                    await run_in_threadpool(schedule, self.redis, job_id, NOT_FINISHED_DELAY)

    def _claim_due(self, count: int) -> list[str]:
        due = self.redis.zrangebyscore(DUE_KEY, 0, time.time(), start=0, num=count)
        return [job_id.decode() for job_id in due if self.redis.zrem(DUE_KEY, job_id)]

    async def _start(self, http: httpx.AsyncClient, job_id: str) -> None:
        webhook = await run_in_threadpool(self.describe_job, job_id)
        if webhook is None:
            return
        busy = sum(tenant == webhook.tenant for tenant, _ in self.in_flight.values()) >= self.tenant_bound
        if not webhook.finished or busy:
            delay = TENANT_BUSY_DELAY if webhook.finished else NOT_FINISHED_DELAY
            await run_in_threadpool(schedule, self.redis, job_id, delay)
            return
        task = asyncio.create_task(self._attempt(http, job_id, webhook))
        self.in_flight[task] = (webhook.tenant, job_id)
        task.add_done_callback(self.in_flight.pop)

    async def _hand_back(self) -> None:
        """On shutdown: the deliveries in flight are stopped and due again at once, for any API process."""
        tasks = list(self.in_flight.items())
        for task, _ in tasks:
            task.cancel()
        await asyncio.gather(*(task for task, _ in tasks), return_exceptions=True)
        if tasks:
            due_now = {job_id: time.time() for _, (_, job_id) in tasks}
            with contextlib.suppress(redis.exceptions.RedisError):
                await run_in_threadpool(self.redis.zadd, DUE_KEY, due_now)

    async def _attempt(self, http: httpx.AsyncClient, job_id: str, webhook: Webhook) -> None:
        try:
            attempt = int(await run_in_threadpool(self.redis.hincrby, ATTEMPTS_KEY, job_id, 1))
            reason = await self._deliver(http, job_id, webhook, {"job_id": job_id, "attempt": attempt})
            if reason is None:
                await run_in_threadpool(self.redis.hdel, ATTEMPTS_KEY, job_id)
            else:
                await self._retry_later(job_id, attempt, reason)
        except redis.exceptions.RedisError as exc:
            log.warning("webhook attempt not recorded: %s", exc, extra={"job_id": job_id})
            with contextlib.suppress(redis.exceptions.RedisError):
                await run_in_threadpool(schedule, self.redis, job_id, NOT_FINISHED_DELAY)

    async def _deliver(
        self, http: httpx.AsyncClient, job_id: str, webhook: Webhook, extra: dict
    ) -> str | None:
        """One attempt, within the deadline; None when it is over (delivered, or refused for good),
        else why it failed."""
        try:
            async with asyncio.timeout(self.deadline):
                status = await self._post(http, job_id, webhook)
        except WebhookRefused as exc:
            log.warning("webhook refused: %s", exc, extra=extra)
            return None
        except TimeoutError:
            return f"no answer within {self.deadline:g} s"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        except Exception as exc:  # unforeseen: this attempt failed, the dispatcher goes on
            log.exception("webhook attempt failed unexpectedly", extra=extra)
            return type(exc).__name__
        if 200 <= status < 300:
            log.info("webhook delivered", extra=extra)
            return None
        return f"answered {status}"

    async def _post(self, http: httpx.AsyncClient, job_id: str, webhook: Webhook) -> int:
        """POST the signed resource to the checked address; the answer's status, its body unread."""
        url = canonical_url(webhook.url)
        _, host, port = parse_url(url)
        addresses = await run_in_threadpool(resolve, host, port, self.allow_private)
        target, headers, extensions = pinned_request(url, addresses[0])
        message_id = f"msg_{job_id}"
        timestamp = int(time.time())
        headers |= {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.key, message_id, timestamp, webhook.body),
        }
        request = http.stream("POST", target, content=webhook.body, headers=headers, extensions=extensions)
        async with request as response:
            return response.status_code  # closed unread: the connection is dropped, not drained

    async def _retry_later(self, job_id: str, attempt: int, reason: str) -> None:
        extra = {"job_id": job_id, "attempt": attempt}
        if attempt > self.retries:
            log.warning("webhook given up after %d attempts: %s", attempt, reason, extra=extra)
            await run_in_threadpool(self.redis.hdel, ATTEMPTS_KEY, job_id)
            return
        delay = self.backoff * 2 ** (attempt - 1)
        log.info("webhook attempt failed (%s); next in %.1f s", reason, delay, extra=extra)
        await run_in_threadpool(schedule, self.redis, job_id, delay)
