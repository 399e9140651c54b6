"""Free TCP ports on 127.0.0.1 for servers the tests start.

A port is taken outside the kernel's ephemeral range (``net.ipv4.ip_local_port_range``), which outgoing
connections draw their local ports from: a server that listens a moment after its port was chosen (SeaweedFS
starts its S3 gateway after its other services have connected to each other) cannot then find the port taken
by one of those connections.
"""
import random
import socket
from pathlib import Path

#: The lowest port handed out (below it: well-known and registered services' usual ports).
LOWEST = 10000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
ATTEMPTS = 200
#: Not the seedable module-level generator: processes seeded alike would try the same ports in the same order.
_RANDOM = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range, ``(first, last)``; Linux's default where it cannot be read."""
    try:
        first, last = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return first, last


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range when
    there is room (else any free port the kernel picks)."""
    first, last = ephemeral_range()
    candidates = [*range(LOWEST, first), *range(last + 1, 65536)]
    for port in _RANDOM.sample(candidates, min(ATTEMPTS, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
