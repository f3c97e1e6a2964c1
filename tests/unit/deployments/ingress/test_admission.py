"""Admission (deployments/ingress/admission.py): bounded in flight, bounded FIFO queue, 429 when full (503 while the
model is starting), 503 on timeout."""

from __future__ import annotations

import asyncio

import pytest

from config import AdmissionConfig
from deployments.ingress.admission import Admission, Gate, Rejected


def _gate(in_flight: int = 2, queued: int = 2, timeout: float = 5.0) -> Gate:
    return Gate(in_flight, AdmissionConfig(max_queued=queued, queue_timeout_s=timeout, retry_after_s=3))


def test_slots_then_queue_then_429():
    async def run() -> None:
        gate = _gate()
        slots = [await gate.acquire(), await gate.acquire()]
        waiting = [asyncio.create_task(gate.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        assert gate.in_flight == 2 and gate.queued == 2
        with pytest.raises(Rejected) as rej:
            await gate.acquire()
        assert (rej.value.status, rej.value.reason, rej.value.retry_after_s) == (429, "queue_full", 3)
        slots[0].release()
        slots[0].release()  # idempotent: a second release frees nothing more
        first = await waiting[0]
        assert gate.in_flight == 2 and gate.queued == 1 and not waiting[1].done()  # FIFO, slot handed over
        slots[1].release()
        second = await waiting[1]
        first.release()
        second.release()
        assert gate.in_flight == 0 and gate.queued == 0

    asyncio.run(run())


def test_full_queue_of_a_starting_model_is_503_not_429():
    async def run() -> None:
        gate = _gate(in_flight=1, queued=1)
        slot = await gate.acquire(starting=True)  # scaled to zero: the slot's request waits for the first replica
        waiting = asyncio.create_task(gate.acquire(starting=True))
        await asyncio.sleep(0)
        with pytest.raises(Rejected) as rej:
            await gate.acquire(starting=True)
        assert (rej.value.status, rej.value.reason, rej.value.retry_after_s) == (503, "starting", 3)
        slot.release()
        (await waiting).release()
        assert gate.in_flight == 0 and gate.queued == 0

    asyncio.run(run())


def test_wait_times_out_with_503_and_leaves_the_queue():
    async def run() -> None:
        gate = _gate(in_flight=1, queued=1, timeout=0.05)
        slot = await gate.acquire()
        with pytest.raises(Rejected) as rej:
            await gate.acquire()
        assert (rej.value.status, rej.value.reason) == (503, "queue_timeout")
        assert gate.queued == 0
        slot.release()
        assert gate.in_flight == 0

    asyncio.run(run())


def test_cancelled_waiter_gives_up_its_place():
    """A client that leaves while queued takes no slot, and a slot handed to it goes on to the next."""

    async def run() -> None:
        gate = _gate(in_flight=1, queued=2)
        slot = await gate.acquire()
        leaving = asyncio.create_task(gate.acquire())
        staying = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        assert gate.queued == 1
        slot.release()
        (await staying).release()
        assert gate.in_flight == 0 and gate.queued == 0

    asyncio.run(run())


def test_newcomers_do_not_jump_the_queue():
    async def run() -> None:
        gate = _gate(in_flight=1, queued=2)
        slot = await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        slot.release()  # hands the slot to the waiter before it even runs
        late = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert gate.in_flight == 1 and gate.queued == 1 and not late.done()  # the newcomer queues
        (await waiter).release()
        (await late).release()
        assert gate.in_flight == 0

    asyncio.run(run())


def test_a_request_counts_its_sequences_and_the_queue_stays_in_order():
    """n: 3 is three sequences; a request heavier than the whole limit runs alone, not never."""

    async def run() -> None:
        gate = _gate(in_flight=4, queued=3)
        heavy = await gate.acquire(weight=3)
        assert gate.in_flight == 3
        second = asyncio.create_task(gate.acquire(weight=2))  # 3 + 2 > 4: waits
        light = asyncio.create_task(gate.acquire(weight=1))  # would fit, but does not jump the queue
        huge = asyncio.create_task(gate.acquire(weight=100))
        await asyncio.sleep(0)
        assert gate.queued == 3 and not second.done() and not light.done()
        heavy.release()
        second_slot, light_slot = await second, await light  # both fit once the heavy one left: 2 + 1 <= 4
        assert gate.in_flight == 3 and not huge.done()
        second_slot.release()
        light_slot.release()
        alone = await huge
        assert alone.weight == 4 and gate.in_flight == 4
        alone.release()
        assert gate.in_flight == 0 and gate.queued == 0

    asyncio.run(run())


def test_a_heavy_waiter_that_leaves_lets_the_ones_behind_it_in():
    async def run() -> None:
        gate = _gate(in_flight=2, queued=2, timeout=0.05)
        held = await gate.acquire()
        heavy = asyncio.create_task(gate.acquire(weight=2))
        light = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(Rejected):
            await heavy  # timed out at the head of the queue
        (await light).release()
        held.release()
        assert gate.in_flight == 0 and gate.queued == 0

    asyncio.run(run())


def test_per_model_limits_and_override():
    derived = Admission({"a": 3, "b": 5}, AdmissionConfig())
    assert (derived.gate("a").max_in_flight, derived.gate("b").max_in_flight) == (3, 5)
    fixed = Admission({"a": 3, "b": 5}, AdmissionConfig(max_in_flight=2))
    assert fixed.gate("a").max_in_flight == fixed.gate("b").max_in_flight == 2
