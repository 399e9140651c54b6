"""The limit: a bare asyncio load generator that sends prepared request bodies and reads answers unparsed.

Same batches, same bodies and the same number of connections in flight as the clients under test, but no
JSON parsing, no decoding and no HTTP library: what it reaches is the most any client can get from a server
on this machine.
"""
from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _run(url: str, bodies: list[bytes], concurrency: int) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [(f"POST /embeddings HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n").encode() + body for body in bodies]
    next_index = iter(range(len(requests)))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port, limit=2**26)
        try:
            for index in next_index:  # a shared iterator: each batch is sent exactly once
                status = await _exchange(reader, writer, requests[index])
                if status != 200:
                    raise RuntimeError(f"the server answered HTTP {status} to the load generator's batch {index}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))


def load_generator(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Send every body as one ``POST /embeddings`` with ``concurrency`` connections; return the seconds taken."""
    started = time.perf_counter()
    asyncio.run(_run(url, bodies, concurrency))
    return time.perf_counter() - started
