"""``DrainBatcher``: how drain tokens become batched drains (no database, no broker)."""

from __future__ import annotations

import asyncio

import pytest
from taskiq import AckableMessage, InMemoryBroker, TaskiqMessage

from engine.worker.batching import DrainBatcher, TokenReceiver


class _Drains:
    """Records each drain's keys; a drain waits until the test lets it finish."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.running: list[list[str]] = []
        self.most_at_once = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, keys: list[str]) -> None:
        overlap = {key for batch in self.running for key in batch} & set(keys)
        assert not overlap, f"{overlap} in two drains at once"
        self.batches.append(keys)
        self.running.append(keys)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            await self.release.wait()
        finally:
            self.running.remove(keys)


def _done(log: list[str], key: str):  # type: ignore[no-untyped-def]
    async def done() -> None:
        log.append(key)

    return done


async def test_keys_gather_into_drains_of_at_most_keys_per_drain_and_drains_at_once() -> None:
    drains = _Drains()
    drains.release.clear()
    batcher = DrainBatcher(drains, drains=2, keys_per_drain=4)
    acked: list[str] = []
    for index in range(20):
        batcher.submit(f"k{index}", _done(acked, f"k{index}"))
    await asyncio.sleep(0)
    # The first two tokens found both slots free and started a drain each at once;
    # the others gathered meanwhile and go by four, oldest first.
    assert drains.batches == [["k0"], ["k1"]]
    drains.release.set()
    await batcher.wait()
    assert drains.batches[2:4] == [["k2", "k3", "k4", "k5"], ["k6", "k7", "k8", "k9"]]
    assert all(len(batch) <= 4 for batch in drains.batches)
    assert drains.most_at_once == 2
    assert sorted(key for batch in drains.batches for key in batch) == sorted(
        f"k{index}" for index in range(20)
    )
    assert sorted(acked) == sorted(f"k{index}" for index in range(20))  # each token once


async def test_an_idle_batcher_drains_a_single_key_at_once() -> None:
    drains = _Drains()
    batcher = DrainBatcher(drains, drains=4, keys_per_drain=16)
    acked: list[str] = []
    batcher.submit("only", _done(acked, "only"))
    await batcher.wait()
    assert drains.batches == [["only"]]
    assert acked == ["only"]


async def test_a_duplicate_token_merges_and_a_key_never_runs_in_two_drains() -> None:
    drains = _Drains()
    drains.release.clear()
    batcher = DrainBatcher(drains, drains=2, keys_per_drain=2)
    acked: list[str] = []
    batcher.submit("a", _done(acked, "a#1"))
    await asyncio.sleep(0)
    assert drains.batches == [["a"]]
    # "a" is being drained: its new token waits for the next drain, not a parallel one.
    batcher.submit("a", _done(acked, "a#2"))
    batcher.submit("a", _done(acked, "a#3"))  # merged with a#2
    batcher.submit("b", _done(acked, "b"))
    await asyncio.sleep(0)
    assert drains.batches == [["a"], ["b"]]
    drains.release.set()
    await batcher.wait()
    assert drains.batches == [["a"], ["b"], ["a"]]
    assert sorted(acked) == ["a#1", "a#2", "a#3", "b"]


async def test_a_failing_drain_still_acks_its_tokens_and_frees_its_slot() -> None:
    attempts: list[list[str]] = []

    async def failing(keys: list[str]) -> None:
        attempts.append(keys)
        raise RuntimeError("database gone")

    batcher = DrainBatcher(failing, drains=1, keys_per_drain=1)
    acked: list[str] = []
    batcher.submit("a", _done(acked, "a"))
    batcher.submit("b", _done(acked, "b"))
    await batcher.wait()
    assert attempts == [["a"], ["b"]]
    assert acked == ["a", "b"]


def test_limits_must_be_positive() -> None:
    async def drain(keys: list[str]) -> None:
        return None

    with pytest.raises(ValueError, match="at least 1"):
        DrainBatcher(drain, drains=0)


async def test_one_token_naming_several_keys_drains_each_and_is_acked_once_after_all() -> None:
    """The intake's group commit publishes one token for every mailbox it newly scheduled."""
    broker = InMemoryBroker()
    drains = _Drains()
    batcher = DrainBatcher(drains, drains=1, keys_per_drain=1)
    receiver = TokenReceiver(broker, batcher, drain_task="drain", concurrency=4)
    token = broker.formatter.dumps(
        TaskiqMessage(
            task_id="t1",
            task_name="drain",
            labels={},
            labels_types={},
            args=["acct_a", "acct_b", "acct_a"],
            kwargs={},
        )
    )
    acks: list[list[list[str]]] = []
    receiver.receive(
        AckableMessage(data=token.message, ack=lambda: acks.append(list(drains.batches)))
    )
    await batcher.wait()
    assert drains.batches == [["acct_a"], ["acct_b"]]
    assert acks == [[["acct_a"], ["acct_b"]]]  # once, after both drains
