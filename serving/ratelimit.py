"""Admission checks shared by the generation API (``serving.ingress``) and the arena (``serving.arena.app``): who
the client is, how fast it may ask, how many requests a replica holds at once, and the optional bearer key.

Every image costs GPU time, so a client that floods either application must be refused before it reaches a model,
with an answer that tells it when to come back:

- **Client.** A request that carries the application's key (``Authorization: Bearer <key>``, checked against the key
  set in the environment) counts against that key, as ``key:`` plus the start of the key's SHA-256: the key itself
  is kept only as its digest, so it is in no limiter table, log or memory dump. Every other request counts against
  its address, and so does any request to an application without a key (a key nobody checked is worth nothing:
  a client could send a new one with every request). The address is the direct peer by default. With
  ``trusted_proxies: N`` it is the N-th address from the right of ``X-Forwarded-For``, the one the outermost of N
  reverse proxies saw; set N only when that many proxies you run sit in front, since a client can write anything
  into the header. An IPv6 address counts per /64 network, what one host is usually given. Serve's HTTP proxy
  (uvicorn) itself puts the client named by ``X-Forwarded-For`` in place of the peer when the connection comes
  from an address in ``FORWARDED_ALLOW_IPS`` (by default 127.0.0.1 and ::1): a proxy on the same host is
  accounted for whatever N says, and a client on that host can name any address.
- **Rate.** A token bucket per client and route family (``Rate``): ``burst`` requests at once, then one every
  ``period_s / requests`` seconds. It is kept as GCRA (one "theoretical arrival time" per client): admitting a
  request moves that time one interval on, and a request is refused when admitting it would put that time more
  than ``burst`` intervals ahead of now. A refusal is 429 with ``Retry-After``: the whole seconds until one request
  would be admitted (the exact wait rounded up, at least 1). A refused request takes nothing from the bucket.
- **Memory.** A client whose bucket is full again carries no state and is dropped, least recently seen first; at
  most ``max_clients`` are kept per route family, the least recently seen going first when a flood of distinct
  clients passes that (such a client starts again with a full bucket).
- **In flight.** ``InFlight``: at most so many requests at once in a replica, the next one 503 with ``Retry-After``.
- **Per replica.** Counts live in each ingress replica's memory. With N replicas behind Serve's proxy (which spreads
  requests over them) a client gets up to N times the configured rate, and a restarted replica starts with every
  bucket full. That is the usual trade-off of limits kept in memory: nothing shared sits on the request path. Size
  the rates per replica.

Errors are ``serving.schema.ApiError`` (the OpenAI shape both applications answer with).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import ipaddress
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pydantic
from starlette.requests import Request

from models.config import StrictModel

if TYPE_CHECKING:
    from serving.schema import ApiError

# Float slack when comparing times: N requests at one instant must fit a bucket of N.
_EPSILON_S = 1e-6


class Rate(StrictModel):
    """A token bucket: ``burst`` requests at once, then ``requests`` every ``period_s`` seconds on average.

    Any window of ``period_s`` holds at most ``requests + burst`` admitted requests (a full bucket plus what refills
    during the window); a client that keeps asking gets ``requests`` per ``period_s``.
    """

    requests: pydantic.PositiveInt
    period_s: pydantic.PositiveFloat = 60.0
    # None: ``requests`` (a whole period's worth at once).
    burst: pydantic.PositiveInt | None = None

    @property
    def capacity(self) -> int:
        return self.requests if self.burst is None else self.burst

    def describe(self, what: str) -> str:
        return f"{self.requests} {what} per {self.period_s:g} s ({self.capacity} at once)"


class ClientLimits(StrictModel):
    """How clients are told apart and how many the limiter remembers (both applications' ``rate_limit``)."""

    # Reverse proxies you run in front of Serve that append to X-Forwarded-For; 0: the direct peer is the client.
    trusted_proxies: pydantic.NonNegativeInt = 0
    # Clients remembered per route family; the least recently seen are forgotten first.
    max_clients: pydantic.PositiveInt = 100_000


class RateLimit(ClientLimits):
    """``ServeSettings.rate_limit``: per-client rates in each ingress replica of the generation API.

    ``images`` counts generations and edits that passed every other check (a refused request costs no GPU time and
    is told what is wrong with it, as with the queue's 503). ``null``: no limit. The default (60 a minute, 30 at
    once, per client and ingress replica) stops floods without getting in the way of a person or a well-behaved
    program. With ``api_key_env`` set, whoever holds the one key is one client: size ``images`` for all of them.
    """

    images: Rate | None = Rate(requests=60, period_s=60.0, burst=30)


def _error(status: int, message: str, code: str, retry_after_s: int | None = None) -> ApiError:
    # Imported here: serving.schema imports serving.config, which imports this module for its settings.
    from serving.schema import ApiError

    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return ApiError(status, message, code=code, headers=headers)


def busy(message: str, retry_after_s: int) -> ApiError:
    """503 with ``Retry-After``: the server (not the client) is the reason."""
    return _error(503, message, "server_busy", retry_after_s)


def retry_after(wait_s: float) -> int:
    """``Retry-After`` for a wait: whole seconds, rounded up, at least 1 (0 would invite an immediate retry)."""
    return max(1, math.ceil(wait_s - _EPSILON_S))


class RateLimiter:
    """One route family's token buckets, keyed by client; thread-safe (one lock, no awaiting inside).

    ``RateLimiter(None, ...)`` admits everything: a family whose rate is ``null``.
    """

    def __init__(
        self,
        rate: Rate | None,
        *,
        what: str,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate
        self.what = what
        self.max_clients = max_clients
        self.clock = clock
        self.lock = threading.Lock()
        # Client -> theoretical arrival time (GCRA), least recently seen first.
        self.clients: collections.OrderedDict[str, float] = collections.OrderedDict()
        if rate is not None:
            self.interval = rate.period_s / rate.requests
            self.tolerance = rate.capacity * self.interval

    def wait_s(self, client: str) -> float:
        """Count one request of ``client``: 0.0 when admitted, else the seconds until one would be (nothing
        counted)."""
        if self.rate is None:
            return 0.0
        with self.lock:
            now = self.clock()
            arrival = max(self.clients.get(client, now), now) + self.interval
            wait = arrival - now - self.tolerance
            if wait > _EPSILON_S:
                return wait
            self.clients[client] = arrival
            self.clients.move_to_end(client)
            self._forget(now)
            return 0.0

    def _forget(self, now: float) -> None:
        """Drop clients whose bucket is full again from the least recently seen end, then any over ``max_clients``."""
        while self.clients and next(iter(self.clients.values())) <= now:
            self.clients.popitem(last=False)
        while len(self.clients) > self.max_clients:
            self.clients.popitem(last=False)

    def admit(self, client: str) -> None:
        """Count one request of ``client``, or refuse it: 429 with ``Retry-After`` in whole seconds."""
        wait = self.wait_s(client)
        if wait:
            seconds = retry_after(wait)
            message = f"rate limit: at most {self.rate.describe(self.what)}; retry after {seconds} s"
            raise _error(429, message, "rate_limit_exceeded", seconds)


class InFlight:
    """At most ``limit`` requests at once in this replica (waiting or generating); the next gets 503 with
    ``Retry-After: retry_after_s`` at once, rather than a wait no client would sit through."""

    def __init__(self, limit: int, retry_after_s: int):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.count = 0
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self.lock:
            if self.count >= self.limit:
                raise busy(f"server busy: {self.count} requests in flight; retry later", self.retry_after_s)
            self.count += 1
        try:
            yield
        finally:
            with self.lock:
                self.count -= 1


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class BearerKey:
    """The application's key, read from the environment variable ``env_name`` (unset, empty or no name: none).

    Only its SHA-256 is kept; a request's key is hashed and the digests compared in constant time.
    """

    def __init__(self, env_name: str | None):
        key = os.environ.get(env_name, "") if env_name else ""
        self.env_name = env_name
        self.digest = _digest(key) if key else None

    @property
    def required(self) -> bool:
        return self.digest is not None

    def check(self, request: Request) -> str | None:
        """The client id of the key when the request carries it; None when no key is set; 401 when it is missing or
        wrong."""
        if self.digest is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(_digest(given.strip()), self.digest):
            return "key:" + self.digest.hex()[:16]
        error = _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
        error.headers["WWW-Authenticate"] = "Bearer"
        raise error


def client_address(request: Request, trusted_proxies: int) -> str:
    """The address a request counts against: the peer, or with ``trusted_proxies`` N the N-th address from the right
    of ``X-Forwarded-For`` (the peer when the header holds fewer, as when the request bypassed the proxies); IPv6 per
    /64."""
    address = request.client.host if request.client else "unknown"
    if trusted_proxies:
        forwarded = [
            part.strip() for header in request.headers.getlist("x-forwarded-for") for part in header.split(",")
        ]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= trusted_proxies:
            address = forwarded[-trusted_proxies]
    return _normalised(address)


def _normalised(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        # Not an address (a proxy's "host:port", a test client's name): kept, cut short so it cannot grow the table.
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_id(request: Request, key: BearerKey, limits: ClientLimits) -> str:
    """The client a request counts against: its checked key, else its address (401 from ``key.check`` first)."""
    return key.check(request) or "addr:" + client_address(request, limits.trusted_proxies)
