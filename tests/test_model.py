"""Model-based test: a real Engine and tests/model.py, driven side by side by Hypothesis.

After every step the two must agree on every SKU's stock per location and on its ATS per
channel, and the engine must keep the two invariants of DESIGN.md. Refusals must match
by exception type (and details). Time is not modelled to the millisecond: a hold lives
either for ten minutes (never expires during a run) or for 1 ms, after which the step
sleeps long enough that the server's clock has certainly passed its expiry.

The tests at the end pin, as minimal sequences, the engine bugs this model found.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec
import pytest
from helpers import claim_database, setup_shop
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from model import Level, Model, Policy, merge

from engine import BufferOverride, Engine, HoldState, connect, keys
from engine import Policy as EnginePolicy
from engine import PolicyKind as EngineKind
from engine.errors import (
    HoldNotFoundError,
    InsufficientStockError,
    ShortfallError,
    StockguardError,
)

LONG_TTL_MS = 10 * 60_000  # never expires during a run
SHORT_TTL_MS = 1  # expired by the end of the step that placed it
EXPIRY_WAIT_S = 0.01
LOCATIONS = ("store", "wh1", "wh2")  # engine.stock lists locations sorted by name
CHANNELS = {"web": ("wh1", "wh2"), "amazon": ("wh2", "wh1"), "pos": ("store", "wh1")}
SKUS = ("A", "B", "A1", "C")  # A and A1 share a partition; B and C each have their own
APART = 2  # a partition that holds none of the SKUs: a hold homed there is multi-part
REASON = "model"
STOCKED = [(sku, location) for sku in SKUS for location in LOCATIONS]
assert len({keys.partition_of(s) for s in SKUS}) == 3
assert APART not in {keys.partition_of(s) for s in SKUS}

buffers = st.integers(0, 1)
pool = st.builds(Policy, st.just("pool"), st.just(0), buffers)
cap = st.builds(Policy, st.just("cap"), st.integers(0, 8), buffers)
cap_pct = st.builds(Policy, st.just("cap_pct"), st.sampled_from([0, 30, 50, 100]), buffers)
fence = st.builds(Policy, st.just("fence"), st.integers(0, 3), buffers)
skus = st.sampled_from(SKUS)
locations = st.sampled_from(LOCATIONS)
channels = st.sampled_from(sorted(CHANNELS))
ttls = st.sampled_from([LONG_TTL_MS, SHORT_TTL_MS])
hold_lines = st.lists(st.tuples(skus, st.integers(1, 2)), min_size=1, max_size=3)
# (buffer, override): an override that is always in force, or one long past.
sku_settings = st.tuples(
    st.integers(0, 1), st.sampled_from([None, ("always", 0), ("always", 2), ("past", 5)])
)
# "always" ends in 2096.
OVERRIDE_WINDOWS = {"always": (0, 4_000_000_000_000), "past": (0, 1)}


def _engine_policy(p: Policy) -> EnginePolicy:
    return EnginePolicy(EngineKind(p.kind), p.qty, p.buffer)


def _lines(hold: Any) -> list[tuple[str, str, int]]:
    return sorted((line.sku, line.location, line.qty) for line in hold.lines)


def _hold_id(n: int, partition: int) -> str:
    """A readable hold id whose home is the given partition."""
    return next(f"h{n}.{k}" for k in range(1000) if keys.partition_of(f"h{n}.{k}") == partition)


async def _all(*awaitables: Awaitable[Any]) -> list[Any]:
    """asyncio.gather, called inside the running loop."""
    return list(await asyncio.gather(*awaitables))


def _same_refusal(actual: StockguardError, expected: StockguardError) -> None:
    assert type(actual) is type(expected), f"engine refused {actual!r}, model {expected!r}"
    assert vars(actual) == vars(expected), f"engine {actual}; model {expected}"


class EngineVsModel(RuleBasedStateMachine):
    redis_url: ClassVar[str]

    holds = Bundle("holds")
    moves = Bundle("moves")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        try:
            self.client = self.run(connect(self.redis_url))
            self.run(claim_database(self.client, self.redis_url))
        except BaseException:
            self.loop.close()
            raise
        self.engine = Engine(self.client)
        self.model = Model({})  # its channels are drawn in setup()
        self.calls: dict[str, tuple[Any, ...]] = {}  # hold or op id -> the call's arguments
        self.first: dict[str, Any] = {}  # hold id -> the engine's first refusal, or None
        self.multi_part: set[str] = set()
        self.counter = 0

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        try:
            self.run(self.client.aclose())
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.run(asyncio.wait(pending))
            self.run(self.loop.shutdown_asyncgens())
            self.loop.close()

    def fresh(self) -> int:
        self.counter += 1
        return self.counter

    def both(
        self, label: str, engine_call: Callable[[], Awaitable[Any]], model_call: Callable[[], Any]
    ) -> tuple[Any, Any]:
        """Runs the call on both; returns (engine result, model result), or two refusals."""
        try:
            actual = self.run(engine_call())
        except StockguardError as refusal:
            actual = refusal
        try:
            expected = model_call()
        except StockguardError as refusal:
            expected = refusal
        refused = isinstance(expected, StockguardError)
        outcome = type(expected).__name__ if refused else getattr(expected, "state", "ok")
        event(f"{label}: {outcome}")
        assert isinstance(actual, StockguardError) == refused, (
            f"engine {actual!r}, model {expected!r}"
        )
        return actual, expected

    def let_expire(self) -> None:
        self.run(asyncio.sleep(EXPIRY_WAIT_S))
        self.model.advance(10)

    # -- setup -------------------------------------------------------------------------

    @initialize(
        amazon=st.one_of(cap, cap_pct),
        pos=fence,
        web=pool,
        settings=st.lists(sku_settings, min_size=len(SKUS), max_size=len(SKUS)),
        overrides=st.lists(st.tuples(skus, channels, st.one_of(pool, cap, cap_pct, fence))),
        stock=st.lists(st.integers(0, 10), min_size=len(STOCKED), max_size=len(STOCKED)),
    )
    def setup(
        self,
        amazon: Policy,
        pos: Policy,
        web: Policy,
        settings: list[tuple[int, Any]],
        overrides: list[tuple[str, str, Policy]],
        stock: list[int],
    ) -> None:
        """Three locations; web pools, amazon is capped, pos is ring-fenced."""
        policies = {"web": web, "amazon": amazon, "pos": pos}
        self.model.channels = {c: (CHANNELS[c], policies[c]) for c in CHANNELS}
        self.run(self._define(policies, dict(zip(SKUS, settings, strict=True)), overrides))
        for (sku, location), qty in zip(STOCKED, stock, strict=True):
            if qty:
                self.receive(sku, location, qty)

    async def _define(
        self,
        policies: dict[str, Policy],
        settings: dict[str, tuple[int, Any]],
        overrides: list[tuple[str, str, Policy]],
    ) -> None:
        for location in LOCATIONS:
            await self.engine.define_location(location)
        for channel, policy in policies.items():
            await self.engine.define_channel(channel, CHANNELS[channel], _engine_policy(policy))
        for sku, (buffer, override) in settings.items():
            await self.engine.define_sku(sku, buffer=buffer)
            self.model.buffers[sku] = buffer
            if override is not None:
                window, qty = override
                start, end = OVERRIDE_WINDOWS[window]
                await self.engine.set_buffer_override(sku, BufferOverride(start, end, qty))
                self.model.buffers[sku] = qty if window == "always" else buffer
        for sku, channel, policy in overrides:
            await self.engine.set_policy(sku, channel, _engine_policy(policy))
            self.model.policies[sku, channel] = policy

    # -- moves -------------------------------------------------------------------------

    def _engine_move(
        self, op_id: str, kind: str, sku: str, location: str, qty: int, *extra: Any
    ) -> Awaitable[Any]:
        e = self.engine
        if kind == "transfer":
            return e.transfer(sku, location, extra[0], qty, op_id=op_id)
        if kind == "return_units":
            damaged = extra[0] == "damaged"
            return e.return_units(sku, location, qty, damaged=damaged, reason=REASON, op_id=op_id)
        if kind == "adjust":
            return e.adjust(sku, location, qty, reason=REASON, op_id=op_id)
        return getattr(e, kind)(sku, location, qty, op_id=op_id)

    def _move(self, op_id: str, *call: Any) -> str:
        actual, expected = self.both(
            call[0], lambda: self._engine_move(op_id, *call), lambda: self.model.move(op_id, *call)
        )
        if isinstance(expected, StockguardError):
            _same_refusal(actual, expected)
        else:
            assert Level(*msgspec.structs.astuple(actual)) == expected
        self.calls.setdefault(op_id, call)
        return op_id

    @rule(target=moves, sku=skus, location=locations, qty=st.integers(1, 6))
    def receive(self, sku: str, location: str, qty: int) -> str:
        return self._move(f"op{self.fresh()}", "receive", sku, location, qty)

    @rule(target=moves, sku=skus, location=locations, delta=st.integers(-4, 4).filter(bool))
    def adjust(self, sku: str, location: str, delta: int) -> str:
        return self._move(f"op{self.fresh()}", "adjust", sku, location, delta)

    @rule(target=moves, sku=skus, location=locations, counted=st.integers(0, 8))
    def count(self, sku: str, location: str, counted: int) -> str:
        return self._move(f"op{self.fresh()}", "count", sku, location, counted)

    @rule(
        target=moves,
        kind=st.sampled_from(["ship", "cancel"]),
        pick=st.integers(0, 11),
        qty=st.integers(1, 2),
    )
    def ship_or_cancel(self, kind: str, pick: int, qty: int) -> str:
        """From the pick-th place with committed units if there is one, else from any."""
        places = sorted(k for k, v in self.model.committed.items() if v > 0) or STOCKED
        sku, location = places[pick % len(places)]
        return self._move(f"op{self.fresh()}", kind, sku, location, qty)

    @rule(
        target=moves,
        sku=skus,
        route=st.permutations(LOCATIONS).map(lambda p: p[:2]),
        qty=st.integers(1, 3),
    )
    def transfer(self, sku: str, route: tuple[str, str], qty: int) -> str:
        return self._move(f"op{self.fresh()}", "transfer", sku, route[0], qty, route[1])

    @rule(
        target=moves,
        sku=skus,
        location=locations,
        qty=st.integers(1, 3),
        disposition=st.sampled_from(["restock", "damaged"]),
    )
    def return_units(self, sku: str, location: str, qty: int, disposition: str) -> str:
        return self._move(f"op{self.fresh()}", "return_units", sku, location, qty, disposition)

    @rule(op_id=moves, same_payload=st.booleans())
    def replay_move(self, op_id: str, same_payload: bool) -> None:
        """The same payload gets the first outcome again; another quantity is a conflict."""
        kind, sku, location, qty, *extra = self.calls[op_id]
        if not same_payload:
            qty = qty + 1 if qty + 1 != 0 else qty + 2
        self._move(op_id, kind, sku, location, qty, *extra)

    # -- holds -------------------------------------------------------------------------

    def _check_hold(self, actual: Any, expected: Any, placing: tuple[str, Any] = ("", [])) -> None:
        """placing: the (channel, lines) of a new hold, to check an InsufficientStockError."""
        channel, lines = placing
        if isinstance(expected, InsufficientStockError) and channel:
            # Which short SKU is named depends on the order parts reply; check its numbers.
            assert isinstance(actual, InsufficientStockError), f"engine {actual!r}"
            assert actual.requested == merge(lines)[actual.sku]
            assert actual.available == self.model.ats(channel, actual.sku) < actual.requested
        elif isinstance(expected, StockguardError):
            _same_refusal(actual, expected)
        else:
            assert (actual.id, actual.channel) == (expected.id, expected.channel)
            assert actual.state is HoldState(expected.state)
            assert _lines(actual) == sorted(expected.lines)

    def _place(self, hold_id: str, channel: str, lines: list[tuple[str, int]], ttl: int) -> Any:
        return self.both(
            "hold" + (" multi-part" if hold_id in self.multi_part else ""),
            lambda: self.engine.hold(channel, lines, ttl_ms=ttl, hold_id=hold_id),
            lambda: self.model.hold(hold_id, channel, lines, ttl),
        )

    def _new_hold(
        self, channel: str, lines: list[tuple[str, int]], ttl: int, home_apart: bool
    ) -> str:
        """home_apart: the hold's record lives in a partition none of its SKUs is in."""
        home = APART if home_apart else keys.partition_of(lines[0][0])
        hold_id = _hold_id(self.fresh(), home)
        if {keys.partition_of(sku) for sku in merge(lines)} != {home}:
            self.multi_part.add(hold_id)
        actual, expected = self._place(hold_id, channel, lines, ttl)
        self._check_hold(actual, expected, (channel, lines))
        if ttl == SHORT_TTL_MS:
            self.let_expire()
        self.calls[hold_id] = (channel, lines, ttl)
        self.first[hold_id] = actual if isinstance(actual, StockguardError) else None
        return hold_id

    @rule(target=holds, channel=channels, lines=hold_lines, home_apart=st.booleans())
    def hold(self, channel: str, lines: list[tuple[str, int]], home_apart: bool) -> str:
        return self._new_hold(channel, lines, LONG_TTL_MS, home_apart)

    @rule(target=holds, channel=channels, lines=hold_lines, home_apart=st.booleans())
    def hold_expiring(self, channel: str, lines: list[tuple[str, int]], home_apart: bool) -> str:
        """A hold that is expired by the next step."""
        return self._new_hold(channel, lines, SHORT_TTL_MS, home_apart)

    @rule(target=holds, channel=channels, lines=hold_lines, home_apart=st.booleans())
    def sell(self, channel: str, lines: list[tuple[str, int]], home_apart: bool) -> str:
        """A checkout: hold, then confirm straight away."""
        hold_id = self._new_hold(channel, lines, LONG_TTL_MS, home_apart)
        if hold_id in self.model.holds:
            self._on_hold(hold_id, "confirm")
        return hold_id

    @rule(hold_id=holds, extra=st.none() | skus)
    def replay_hold(self, hold_id: str, extra: str | None) -> None:
        """The same payload gets the first outcome (the hold as it is now); with one more
        unit of `extra` it is a conflict, whatever the first outcome was."""
        channel, lines, ttl = self.calls[hold_id]
        if extra is not None:
            actual, expected = self._place(hold_id, channel, [*lines, (extra, 1)], ttl)
            self._check_hold(actual, expected)
        else:
            actual, expected = self._place(hold_id, channel, lines, ttl)
            first = self.first[hold_id]
            self._check_hold(actual, first if first is not None else expected)

    def _on_hold(self, hold_id: str, verb: str, *args: Any) -> None:
        model_verb = getattr(self.model, verb)
        state = self.model.holds[hold_id].state if hold_id in self.model.holds else "refused"
        actual, expected = self.both(
            f"{verb} {state}" + (" multi-part" if hold_id in self.multi_part else ""),
            lambda: getattr(self.engine, verb)(hold_id, *args),
            lambda: model_verb(hold_id, *args),
        )
        self._check_hold(actual, expected)

    @rule(hold_id=holds)
    def confirm(self, hold_id: str) -> None:
        self._on_hold(hold_id, "confirm")

    @rule(hold_id=holds)
    def release(self, hold_id: str) -> None:
        self._on_hold(hold_id, "release")

    @rule(hold_id=holds, ttl=ttls)
    def extend(self, hold_id: str, ttl: int) -> None:
        self._on_hold(hold_id, "extend", ttl)
        if ttl == SHORT_TTL_MS:
            self.let_expire()

    @rule(verb=st.sampled_from(["confirm", "release", "extend"]))
    def unknown_hold(self, verb: str) -> None:
        args = (LONG_TTL_MS,) if verb == "extend" else ()
        with pytest.raises(HoldNotFoundError):
            self.run(getattr(self.engine, verb)("no-such-hold", *args))

    @rule()
    def sweep(self) -> None:
        """Settles expired holds early; the model has nothing to change."""
        self.run(self.engine.sweep())

    # -- after every step ----------------------------------------------------------------

    @invariant()
    def stock_and_ats_match_the_model(self) -> None:
        if not self.model.channels:
            return
        names = sorted(CHANNELS)
        levels = self.run(_all(*(self.engine.stock(sku, names) for sku in SKUS)))
        for level in levels:
            sku = level.sku
            for row in level.locations:
                assert row.committed + row.held <= row.on_hand, f"{sku}@{row.location}: {row}"
                expected = self.model.level(sku, row.location)
                assert Level(*msgspec.structs.astuple(row)) == expected, sku
            assert level.ats == {c: self.model.ats(c, sku) for c in names}, sku
        by_channel = self.run(_all(*(self.engine.ats(c, list(SKUS)) for c in names)))
        for channel, ats in zip(names, by_channel, strict=True):
            assert ats == {sku: self.model.ats(channel, sku) for sku in SKUS}, channel

    @invariant()
    def live_holds_match_and_stay_within_allocations(self) -> None:
        live = self.model.live()
        read = self.run(_all(*(self.engine.get_hold(h.id) for h in live)))
        held: dict[tuple[str, str], int] = {}
        for expected, actual in zip(live, read, strict=True):
            self._check_hold(actual, expected)
            for line in actual.lines:
                key = (line.sku, actual.channel)
                held[key] = held.get(key, 0) + line.qty
        for (sku, channel), units in held.items():
            p = self.model.policy(sku, channel)
            if p.kind in ("cap", "fence"):
                assert units <= max(0, p.qty - p.buffer), f"{channel} holds {units} of {sku}"


EXAMPLES = int(os.environ.get("STOCKGUARD_MODEL_EXAMPLES", "40"))


@pytest.mark.slow
def test_engine_matches_the_model(redis_url: str) -> None:
    EngineVsModel.redis_url = redis_url
    run_state_machine_as_test(
        EngineVsModel,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=30,
            deadline=None,
            derandomize=False,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- engine bugs the model found, as minimal sequences -----------------------------------


async def _shop(client: Any) -> Engine:
    """helpers.setup_shop: web sells from wh1 then wh2; A and B are in different partitions."""
    engine = Engine(client)
    await setup_shop(engine)
    return engine


async def test_release_of_a_refused_hold_is_not_found(client: Any) -> None:
    engine = await _shop(client)
    with pytest.raises(InsufficientStockError):
        await engine.hold("web", {"A": 1}, ttl_ms=LONG_TTL_MS, hold_id="refused-1")
    with pytest.raises(HoldNotFoundError):
        await engine.release("refused-1")


async def test_late_confirm_retry_of_a_multi_part_hold(client: Any) -> None:
    engine = await _shop(client)
    await engine.receive("A", "wh1", 2)
    await engine.receive("B", "wh1", 2)
    await engine.hold("web", {"A": 2, "B": 2}, ttl_ms=SHORT_TTL_MS, hold_id="late-1")
    await asyncio.sleep(EXPIRY_WAIT_S)
    other = await engine.hold("web", {"B": 1}, ttl_ms=LONG_TTL_MS)
    with pytest.raises(ShortfallError) as short:
        await engine.confirm("late-1")
    assert short.value.missing == {"B": 1}
    await engine.release(other.id)
    assert (await engine.confirm("late-1")).state is HoldState.CONFIRMED


async def test_a_refused_hold_that_expired_before_its_undo_stays_refused(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await _shop(client)
    await engine.receive("A", "wh1", 5)  # B has none: its part is refused
    each_part = engine._each_part

    async def late(*args: Any) -> list[Any]:  # the undo arrives after the 1 ms TTL
        await asyncio.sleep(EXPIRY_WAIT_S)
        return await each_part(*args)

    monkeypatch.setattr(engine, "_each_part", late)
    hold_id = _hold_id(0, keys.partition_of("A"))  # the part that is placed is the home
    with pytest.raises(InsufficientStockError):
        await engine.hold("web", {"A": 1, "B": 1}, ttl_ms=SHORT_TTL_MS, hold_id=hold_id)
    with pytest.raises(HoldNotFoundError):
        await engine.confirm(hold_id)
    assert (await engine.stock("A")).ats["web"] == 5, "the refused hold holds units"
