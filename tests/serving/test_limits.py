"""The admission checks both applications share (``serving.ratelimit``), without Ray: the token bucket on a fake clock
(Retry-After, refill, memory), who a client is (key, peer, X-Forwarded-For behind trusted proxies, IPv6 per /64),
the in-flight bound, and the 429 a FastAPI app answers with, in process. The deployed applications are checked in
``test_app.py`` (``test_rate_limited_client_gets_429``) and ``test_arena.py`` (``test_arena_round_flood_is_bounded``).
"""

from __future__ import annotations

import logging
import threading

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.ratelimit import (
    BearerKey,
    ClientLimits,
    InFlight,
    Rate,
    RateLimiter,
    client_address,
    client_id,
    retry_after,
)
from serving.schema import ApiError


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(limiter: RateLimiter, client: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        limiter.admit(client)
    return caught.value


def test_token_bucket_retry_after_and_refill():
    clock = Clock()
    # One request every 10 s on average, 3 at once.
    limiter = RateLimiter(Rate(requests=6, period_s=60, burst=3), what="rounds per client", clock=clock)
    for _ in range(3):
        limiter.admit("a")
    error = refusal(limiter, "a")
    assert error.status == 429 and error.headers == {"Retry-After": "10"}
    assert error.body() == {
        "error": {
            "message": "rate limit: at most 6 rounds per client per 60 s (3 at once); retry after 10 s",
            "type": "invalid_request_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    limiter.admit("b")  # another client has its own bucket

    # Retry-After is the wait rounded up to whole seconds, never 0; refused requests take nothing.
    clock.now += 9.5
    assert refusal(limiter, "a").headers["Retry-After"] == "1"
    clock.now += 0.5
    limiter.admit("a")  # exactly when Retry-After said
    assert refusal(limiter, "a").headers["Retry-After"] == "10"

    # Idle long enough, the bucket is full again: a burst, and no more.
    clock.now += 1000
    for _ in range(3):
        limiter.admit("a")
    assert limiter.wait_s("a") == pytest.approx(10.0)

    # A rate that does not divide into seconds: one request every 1.5 s -> Retry-After 2 (1 after 0.6 s more).
    odd = RateLimiter(Rate(requests=2, period_s=3, burst=1), what="votes", clock=clock)
    odd.admit("a")
    assert refusal(odd, "a").headers["Retry-After"] == "2"
    clock.now += 0.6
    assert refusal(odd, "a").headers["Retry-After"] == "1"
    assert [retry_after(wait) for wait in (1e-9, 0.4, 1.0, 1.0000001, 2.2)] == [1, 1, 1, 1, 3]

    # burst left out: a whole period's worth at once. None: no limit at all.
    whole = RateLimiter(Rate(requests=4, period_s=60), what="votes", clock=clock)
    assert [whole.wait_s("a") for _ in range(5)][:4] == [0.0] * 4 and whole.wait_s("a") == pytest.approx(15.0)
    unlimited = RateLimiter(None, what="votes", clock=clock)
    assert all(unlimited.wait_s("a") == 0.0 for _ in range(1000)) and not unlimited.clients


def test_limiter_memory_is_bounded():
    clock = Clock()
    limiter = RateLimiter(Rate(requests=1, period_s=10, burst=2), what="rounds", max_clients=3, clock=clock)
    for client in ("a", "b", "c", "d"):
        limiter.admit(client)
    # At most max_clients remembered, the least recently seen ("a") forgotten first.
    assert list(limiter.clients) == ["b", "c", "d"]
    limiter.admit("b")
    assert list(limiter.clients) == ["c", "d", "b"]
    # A client whose bucket is full again carries nothing: dropped as soon as others come by.
    clock.now += 10.5
    limiter.admit("e")
    assert list(limiter.clients) == ["b", "e"]  # b spent two, so its bucket is not full yet
    clock.now += 100
    limiter.admit("f")
    assert list(limiter.clients) == ["f"]


def test_limiter_is_thread_safe():
    limiter = RateLimiter(Rate(requests=1, period_s=3600, burst=50), what="votes", clock=Clock())
    admitted = []
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        admitted.append(sum(limiter.wait_s("one client") == 0.0 for _ in range(100)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 50


def test_in_flight_bound():
    in_flight = InFlight(2, retry_after_s=3)
    with in_flight.slot(), in_flight.slot():
        with pytest.raises(ApiError) as caught, in_flight.slot():
            pass
        assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "3"}
        assert caught.value.body()["error"]["code"] == "server_busy"
    assert in_flight.count == 0
    with in_flight.slot():  # released, also after an error inside
        pass


def request(headers: dict[str, str] | None = None, peer: str = "198.51.100.9") -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "client": (peer, 50000)})


def test_who_the_client_is(monkeypatch):
    # The direct peer by default: X-Forwarded-For is anyone's to write.
    spoofed = {"X-Forwarded-For": "203.0.113.5"}
    assert client_address(request(spoofed), 0) == "198.51.100.9"
    # Behind N trusted proxies: the N-th address from the right (what the outermost proxy saw).
    chain = {"X-Forwarded-For": "10.9.9.9, 203.0.113.5, 192.0.2.1"}  # a spoofed entry, the client, a proxy
    assert client_address(request(chain), 1) == "192.0.2.1"
    assert client_address(request(chain), 2) == "203.0.113.5"
    assert client_address(request(spoofed), 2) == "198.51.100.9"  # fewer entries than proxies: it bypassed them
    assert client_address(request(), 1) == "198.51.100.9"
    # IPv6 per /64 (what one host is usually given), IPv4-mapped as IPv4; other text cut short.
    assert client_address(request(peer="2001:db8:1:2:aaaa::1"), 0) == "2001:db8:1:2::/64"
    assert client_address(request(peer="2001:db8:1:2:bbbb::7"), 0) == "2001:db8:1:2::/64"
    assert client_address(request(peer="::ffff:192.0.2.8"), 0) == "192.0.2.8"
    assert client_address(request({"X-Forwarded-For": "x" * 500}), 1) == "x" * 64

    # An application without a key: a client's made-up key is no identity, its address is.
    limits = ClientLimits()
    monkeypatch.delenv("LIMITS_TEST_KEY", raising=False)
    open_key = BearerKey("LIMITS_TEST_KEY")
    assert client_id(request({"Authorization": "Bearer anything"}), open_key, limits) == "addr:198.51.100.9"

    # With a key: the key's hash (the same from any address), the key itself nowhere; 401 without it.
    monkeypatch.setenv("LIMITS_TEST_KEY", "s3cret-key-value")
    key = BearerKey("LIMITS_TEST_KEY")
    auth = {"Authorization": "Bearer s3cret-key-value"}
    keyed = client_id(request(auth), key, limits)
    assert keyed.startswith("key:") and keyed == client_id(request(auth, peer="192.0.2.77"), key, limits)
    assert "s3cret" not in keyed and "s3cret" not in repr(vars(key))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key-value"}):
        with pytest.raises(ApiError) as caught:
            client_id(request(headers), key, limits)
        assert caught.value.status == 401 and caught.value.headers == {"WWW-Authenticate": "Bearer"}


def test_limited_route_in_process(monkeypatch):
    """A FastAPI app with the applications' error handlers and the same two calls their routes make: a flood from one
    client gets 429 in the OpenAI shape with Retry-After while another client is served."""
    from serving.ingress import install_error_handlers

    limits = ClientLimits(trusted_proxies=1)  # the test client plays the one proxy in front
    limiter = RateLimiter(Rate(requests=1, period_s=30, burst=2), what="image requests")
    monkeypatch.delenv("LIMITS_TEST_KEY", raising=False)
    key = BearerKey("LIMITS_TEST_KEY")
    api = FastAPI()
    install_error_handlers(api, logging.getLogger(__name__))

    @api.post("/work")
    async def work(request: Request) -> dict:
        client = client_id(request, key, limits)
        limiter.admit(client)
        return {"client": client}

    http = TestClient(api)
    flooder = {"X-Forwarded-For": "203.0.113.5"}
    answers = [http.post("/work", headers=flooder) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200, 200, 429, 429, 429]
    assert answers[0].json() == {"client": "addr:203.0.113.5"}
    refused = answers[-1]
    assert refused.headers["Retry-After"] in ("29", "30")  # 30 s a request, less the moments the flood took
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "rate_limit_exceeded"
    assert "retry after" in error["message"]
    assert http.post("/work", headers={"X-Forwarded-For": "203.0.113.6"}).status_code == 200
