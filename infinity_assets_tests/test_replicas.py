"""ReplicaSet: least requests in flight, cool-down after failures, back in rotation after it (no real sleeps)."""
from __future__ import annotations

import pytest

from infinity_assets.client.replicas import ReplicaSet, parse_urls, redact


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_urls_are_comma_separated_trimmed_and_deduplicated():
    assert parse_urls(" http://a:1/, http://b:2 ,http://a:1") == ["http://a:1", "http://b:2"]
    assert parse_urls(["http://a:1"]) == ["http://a:1"]
    with pytest.raises(ValueError, match="is not an http"):
        parse_urls("http://a:1,b:2")
    with pytest.raises(ValueError, match=r"user:\*\*\*@"):
        parse_urls("ftp://user:secret@host")


def test_passwords_are_redacted():
    assert redact("http://user:secret@host:7997") == "http://user:***@host:7997"
    assert redact("http://host:7997") == "http://host:7997"


def test_requests_go_to_the_replica_with_fewest_in_flight_then_round_robin():
    replicas = ReplicaSet(["a", "b", "c"])
    first = [replicas.acquire().url for _ in range(3)]
    assert sorted(first) == ["a", "b", "c"]  # each takes one while the others are busy
    busy = {r.url: r for r in replicas.replicas}
    replicas.release(busy["b"])
    assert replicas.acquire().url == "b"  # b has the fewest in flight now
    for replica in replicas.replicas:
        replica.in_flight = 0
    spread = [replicas.acquire() for _ in range(30)]
    for replica in spread:
        replicas.release(replica)
    assert {u: s["requests"] for u, s in replicas.stats().items()} == {"a": 11, "b": 12, "c": 11}


def test_a_failing_replica_cools_down_longer_each_time_and_comes_back():
    clock = Clock()
    replicas = ReplicaSet(["a", "b"], cooldown=2.0, max_cooldown=5.0, clock=clock)
    a = replicas.replicas[0]
    for pause in (2.0, 4.0, 5.0):  # doubling, capped
        a.in_flight += 1
        replicas.release(a, failed=True)
        assert a.down_until == clock.now + pause
        assert {replicas.acquire().url for _ in range(4)} == {"b"}
        clock.now += pause  # the cool-down is over: a is probed again
        assert "a" in {replicas.acquire().url for _ in range(4)}
    a.in_flight += 1
    replicas.release(a)  # the probe succeeded: back in full rotation, the next failure starts at 2 s again
    a.in_flight += 1
    replicas.release(a, failed=True)
    assert a.down_until == clock.now + 2.0
    assert replicas.stats()["a"]["failures"] == 4


def test_when_every_replica_is_cooling_down_the_one_back_soonest_is_tried():
    clock = Clock()
    replicas = ReplicaSet(["a", "b"], cooldown=2.0, clock=clock)
    a, b = replicas.replicas
    for replica in (b, a, a):
        replica.in_flight += 1
        replicas.release(replica, failed=True)
    assert replicas.healthy_count() == 0
    assert replicas.acquire().url == "b"
    assert replicas.acquire(exclude={"a", "b"}) is None
