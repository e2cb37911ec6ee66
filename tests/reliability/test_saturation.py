"""Graceful saturation in process (docs/api.md#load-shedding): the database pool runs a
turn's end before queued starts, and admission refuses a turn that would wait too long."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from conversations.streaming import admission
from core import db, metrics
from core.db import DbPool


def test_urgent_units_run_before_the_queued_plain_ones():
    pool = DbPool(1)
    gate, entered = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> None:
        entered.set()
        gate.wait(10)

    try:
        blocker = pool.submit(hold)  # holds the one thread
        assert entered.wait(10)
        plain = [pool.submit(lambda n=n: order.append(f"start{n}")) for n in range(3)]
        urgent = pool.submit(lambda: order.append("end"), urgent=True)
        assert pool.queued == 4
        gate.set()
        for future in [blocker, *plain, urgent]:
            future.result(timeout=10)
        assert order == ["end", "start0", "start1", "start2"]
        assert pool.queued == 0 and pool.wait_estimate() == 0
    finally:
        gate.set()
        pool.shutdown()


def test_a_failing_unit_reports_its_error_and_the_thread_goes_on():
    pool = DbPool(1)
    try:
        failing = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=10)
        assert pool.submit(lambda: 42).result(timeout=10) == 42
    finally:
        pool.shutdown()


def test_admission_refuses_when_a_start_would_wait_too_long(settings, monkeypatch):
    settings.CHAT_MAX_PROCESS_STREAMS = 0
    settings.CHAT_BUSY_WAIT_SECONDS = 2.0
    monkeypatch.setattr(admission, "db_wait_estimate", lambda: 1.0)
    with admission.turn_admission():
        assert admission.turns_held() >= 1
    monkeypatch.setattr(admission, "db_wait_estimate", lambda: 7.2)
    with pytest.raises(admission.ServerBusy) as refused, admission.turn_admission():
        pytest.fail("admitted")
    assert refused.value.status_code == 503 and refused.value.code == "server_busy"
    assert refused.value.headers["Retry-After"] == "8"
    settings.CHAT_BUSY_WAIT_SECONDS = 0  # off
    with admission.turn_admission():
        pass


def test_admission_counts_turns_being_started(settings):
    settings.CHAT_MAX_PROCESS_STREAMS = 2
    settings.CHAT_BUSY_WAIT_SECONDS = 0
    held = admission.turns_held()
    assert held == 0
    with (
        admission.turn_admission(),
        admission.turn_admission(),
        pytest.raises(admission.ServerBusy),
        admission.turn_admission(),
    ):
        pytest.fail("admitted")
    assert admission.turns_held() == 0
    assert db.db_queued() >= 0


def test_extractions_past_the_process_limit_are_skipped(settings):
    settings.CHAT_MAX_PROCESS_EXTRACTIONS = 1
    skipped_before = metrics.SKIPPED_EXTRACTIONS._value.get()

    async def scenario() -> tuple[str, str, str]:
        gate = asyncio.Event()

        async def slow() -> str:
            await gate.wait()
            return "extracted"

        async def fast() -> str:
            return "extracted"

        first = asyncio.create_task(
            admission.extraction_bounded(slow, message_id=uuid.uuid4(), skipped="skipped")
        )
        await asyncio.sleep(0)
        second = await admission.extraction_bounded(
            fast, message_id=uuid.uuid4(), skipped="skipped"
        )
        gate.set()
        done = await first
        third = await admission.extraction_bounded(fast, message_id=uuid.uuid4(), skipped="skipped")
        return done, second, third

    assert asyncio.run(scenario()) == ("extracted", "skipped", "extracted")
    assert metrics.SKIPPED_EXTRACTIONS._value.get() == skipped_before + 1


def test_title_calls_have_their_own_bound_and_a_skip_is_counted(settings):
    settings.CHAT_MAX_PROCESS_EXTRACTIONS = 1
    skipped_before = metrics.SKIPPED_TITLES._value.get()
    extractions_before = metrics.SKIPPED_EXTRACTIONS._value.get()

    async def scenario() -> tuple[str, str, str]:
        gate = asyncio.Event()

        async def slow() -> str:
            await gate.wait()
            return "called"

        async def fast() -> str:
            return "called"

        # A turn's own extraction running does not crowd out its title call ...
        extraction = asyncio.create_task(
            admission.extraction_bounded(slow, message_id=uuid.uuid4(), skipped="skipped")
        )
        title = asyncio.create_task(
            admission.extraction_bounded(
                slow, message_id=uuid.uuid4(), skipped="skipped", purpose="title"
            )
        )
        await asyncio.sleep(0)
        # ... but another title call while one runs is skipped.
        second_title = await admission.extraction_bounded(
            fast, message_id=uuid.uuid4(), skipped="skipped", purpose="title"
        )
        gate.set()
        return await extraction, await title, second_title

    assert asyncio.run(scenario()) == ("called", "called", "skipped")
    assert metrics.SKIPPED_TITLES._value.get() == skipped_before + 1
    assert metrics.SKIPPED_EXTRACTIONS._value.get() == extractions_before
