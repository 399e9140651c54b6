"""ReplicaSet: least requests in flight, cool-down after failures, back in rotation after it (no real sleeps);
Router: a request fails over to the next healthy replica only for failures another replica may not have."""
from __future__ import annotations

import pytest

from infinity_assets.client.errors import InfinityBadRequestError, InfinityConnectionError
from infinity_assets.client.replicas import ReplicaSet, Router, parse_urls, redact


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


def _send(router: Router, outcomes: dict[str, Exception | str]) -> tuple[str, list[str]]:
    """Send one request through ``router``; each replica answers (or fails) as ``outcomes`` says."""
    tried: list[str] = []
    for attempt in router.attempts():
        with attempt:
            tried.append(attempt.replica.url)
            outcome = outcomes[attempt.replica.url]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome, tried
    raise AssertionError("unreachable")


def test_a_connection_failure_fails_over_at_once_and_is_counted():
    failovers = []
    router = Router(ReplicaSet(["a", "b"], clock=Clock()), "m", on_failover=lambda: failovers.append(1))
    answer, tried = _send(router, {"a": InfinityConnectionError("refused"), "b": "ok"})
    assert (answer, tried, len(failovers)) == ("ok", ["a", "b"], 1)
    assert [r.in_flight for r in router.replicas.replicas] == [0, 0]
    assert router.replicas.stats()["a"]["failures"] == 1


def test_a_rejected_request_is_not_sent_to_another_replica():
    router = Router(ReplicaSet(["a", "b"], clock=Clock()), "m")
    with pytest.raises(InfinityBadRequestError):
        _send(router, {"a": InfinityBadRequestError("no", status_code=400, server_message="no"), "b": "ok"})
    assert router.replicas.stats()["a"]["failures"] == 0  # the request's fault, not the replica's


def test_when_every_replica_failed_the_last_error_is_raised():
    router = Router(ReplicaSet(["a", "b"], clock=Clock()), "m")
    with pytest.raises(InfinityConnectionError, match="b down"):
        _send(router, {"a": InfinityConnectionError("a down"), "b": InfinityConnectionError("b down")})


def test_any_other_exception_releases_the_replica_and_propagates():
    router = Router(ReplicaSet(["a", "b"], clock=Clock()), "m")
    with pytest.raises(KeyError):
        _send(router, {"a": KeyError("a bug"), "b": "ok"})
    assert [r.in_flight for r in router.replicas.replicas] == [0, 0]
    assert router.replicas.stats()["a"]["failures"] == 0


def test_a_replica_serving_another_model_is_refused_by_name():
    router = Router(ReplicaSet(["a", "b"], clock=Clock()), "colpali")
    router.check_served(router.replicas.replicas[0], {"data": [{"id": "colpali"}]})
    assert router.verified == {"a"}
    with pytest.raises(Exception, match=r"replica b serves \['minilm'\], not 'colpali'"):
        router.check_served(router.replicas.replicas[1], {"data": [{"id": "minilm"}]})
