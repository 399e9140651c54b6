"""Ports for the servers the tests start: free, and never ones an outgoing connection could take meanwhile."""
import socket

import pytest

from infinity_assets_dev.ports import LOWEST, ephemeral_range, free_port


def test_free_ports_are_bindable_and_outside_the_range_outgoing_connections_use() -> None:
    first, last = ephemeral_range()
    assert LOWEST < first <= last  # this machine leaves room below the range
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40  # drawn at random, not one port again and again
    for port in ports:
        assert LOWEST <= port < first or port > last
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from infinity_assets_dev import ports

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr(ports, "LOWEST", busy)  # two candidates: the busy port and the next one
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (busy + 2, 65535))
        assert busy not in {free_port() for _ in range(20)}
