"""A small HTTP/1.1 load generator for the benchmarks (raw asyncio sockets, keep-alive).

Python HTTP clients cost more CPU per request than the server under test on a
2-core machine; writing pre-signed requests (built before the clock starts)
straight to sockets, on uvloop when installed, keeps the generator cheap so the
figures measure the server. Run in its own process:

    python bench/_load.py HOST PORT PATH CONNECTIONS RATE DURATION < requests.jsonl

Each stdin line is ``{"body": "...", "signature": "..."}``; requests are sent in
order, spread over the connections, at ``RATE`` per second (0 = as fast as
possible) until the lines run out or ``DURATION`` seconds pass. Prints one JSON
line: sent, ok, errors, elapsed, and latency percentiles in ms.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time


def _request(host: str, path: str, body: bytes, signature: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked")


async def _read_response(reader: asyncio.StreamReader) -> int:
    # The whole head in one read, not a read per header line: the generator's CPU per
    # request is taken from the server under test on a small machine.
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head.split(maxsplit=2)[1])
    found = _LENGTH.search(head)
    length = int(found[1]) if found else 0
    chunked = _CHUNKED.search(head) is not None
    if chunked:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def main() -> None:
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    connections, rate, duration = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    lines = [json.loads(line) for line in sys.stdin if line.strip()]
    queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            item = await queue.get()
            if not item[0]:
                break
            request, scheduled = item
            writer.write(request)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - scheduled)
            counts["ok" if 200 <= status < 300 else "errors"] += 1
        writer.close()

    requests = [_request(host, path, line["body"].encode(), line["signature"]) for line in lines]
    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    started = time.perf_counter()
    for index, request in enumerate(requests):
        now = time.perf_counter()
        if now - started > duration:
            break
        if rate > 0:
            due = started + index / rate
            if due > now:
                await asyncio.sleep(due - now)
        while rate <= 0 and queue.qsize() > connections * 2:
            await asyncio.sleep(0.0005)
        queue.put_nowait((request, time.perf_counter()))
    for _ in workers:
        queue.put_nowait((b"", 0.0))
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0.0
        )

    print(
        json.dumps(
            {
                "sent": len(latencies),
                "ok": counts["ok"],
                "errors": counts["errors"],
                "elapsed": elapsed,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
            }
        )
    )


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop
        asyncio.run(main())
    else:  # C transports: less of the shared CPU spent generating the load
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
