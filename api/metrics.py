"""Prometheus metrics: request latency, hold outcomes, writer lag and sweeper counts.

Each app has its own registry. Under `serve --workers N` (N > 1) the workers share
PROMETHEUS_MULTIPROC_DIR, and /metrics adds up every worker's samples. Writer lag
and sweeper totals are read from Redis at scrape time, so any worker reports them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from engine import keys

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SWEEPER_STATS = f"{keys.PREFIX}:stats:sweeper"  # hash: runs, settled
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# Unlabelled samples: values key -> (metric, help, gauge or counter).
_SCALARS = {
    "pending": (
        "stockguard_writer_lag_entries", "Outbox entries not yet in the SQL ledger", "gauge"
    ),
    "age_s": (
        "stockguard_writer_lag_seconds", "Age of the oldest outbox entry not yet persisted",
        "gauge",
    ),
    "runs": ("stockguard_sweeper_runs", "Sweeper passes", "counter"),
    "settled": ("stockguard_sweeper_settled", "Expired holds the sweeper settled", "counter"),
    "inbox": (
        "stockguard_channel_inbox_backlog", "Channel deliveries accepted, not yet applied",
        "gauge",
    ),
    "inbox_age_s": (
        "stockguard_channel_inbox_age_seconds", "Age of the oldest delivery not yet applied",
        "gauge",
    ),
    "inbox_dead": (
        "stockguard_channel_inbox_dead_letters",
        "Channel deliveries that can never be applied, kept with the reason", "gauge",
    ),
}  # fmt: skip


class _Snapshot:
    """Values read from Redis just before a scrape, offered as metrics."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        # Per-channel samples: (metric, help, gauge or counter) -> {channel: value}
        self.channels: dict[tuple[str, str, str], dict[str, float]] = {}

    def collect(self) -> Iterator[Metric]:
        for (name, text, kind), by_channel in self.channels.items():
            family_type = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            family = family_type(name, text, labels=["channel"])
            for channel, value in sorted(by_channel.items()):
                family.add_metric([channel], value)
            yield family
        for key, (name, text, kind) in _SCALARS.items():
            family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, text)
            family.add_metric([], self.values.get(key, 0))
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "stockguard_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.holds = Counter(
            "stockguard_hold_outcomes",
            "Hold calls by action (place, extend, confirm, release) and outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "stockguard_channel_webhooks",
            "Channel webhook deliveries by outcome (accepted, duplicate, bad-signature, ...)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self._snapshot = _Snapshot()
        self._holds: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    def hold(self, action: str, outcome: str) -> None:
        child = self._holds.get((action, outcome))
        if child is None:  # labels() costs more than the increment: keep each child
            child = self._holds[action, outcome] = self.holds.labels(action, outcome)
        child.inc()

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        child = self._requests.get((method, route, status))
        if child is None:
            child = self.requests.labels(method, route, str(status))
            self._requests[method, route, status] = child
        child.observe(time.perf_counter() - started)

    def webhook(self, channel: str, outcome: str) -> None:
        self.webhooks.labels(channel, outcome).inc()

    async def render(self, client: Any, store: Any = None, channels: tuple[str, ...] = ()) -> bytes:
        """The exposition text, with writer lag, sweeper totals, channel sync state (from
        Redis) and channel oversells (from the ledger) read now."""
        from engine.channels import inbound
        from engine.writer import Writer

        self._snapshot.channels = await _channel_samples(client, store, channels)
        waiting, age_ms = await inbound.lag(client)

        stats = await client.hgetall(SWEEPER_STATS)
        values = {"runs": float(stats.get("runs", 0)), "settled": float(stats.get("settled", 0))}
        values.update(inbox=waiting, inbox_age_s=age_ms / 1000)
        values.update(inbox_dead=await inbound.dead_letters(client))
        try:
            lag = await Writer(client, None).lag()  # type: ignore[arg-type]
            values.update(pending=lag.pending, age_s=lag.oldest_age_ms / 1000)
        except (RuntimeError, redis.ResponseError):  # no writer has created its group yet
            pass
        self._snapshot.values = values
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        output: bytes = generate_latest(registry) + generate_latest(_single(self._snapshot))
        return output


def _single(collector: _Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


async def record_sweep(client: Any, settled: int) -> None:
    """Adds one sweeper pass to the totals /metrics reports."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(SWEEPER_STATS, "runs", 1)
        if settled:
            pipe.hincrby(SWEEPER_STATS, "settled", settled)
        await pipe.execute()


_SYNC = (  # stats field of the sync worker -> (metric, help, type, scale)
    ("backlog", "stockguard_channel_sync_backlog", "Values waiting to be pushed", "gauge", 1.0),
    ("lag_ms", "stockguard_channel_sync_lag_seconds",
     "From a stock change to the channel accepting it, last push", "gauge", 0.001),
    ("last_push_ms", "stockguard_channel_last_push_timestamp_seconds",
     "When the channel last accepted a value", "gauge", 0.001),
    ("pushes", "stockguard_channel_pushes", "Values the channel accepted", "counter", 1.0),
    ("failures", "stockguard_channel_push_failures", "Values the channel refused", "counter", 1.0),
)  # fmt: skip


async def _channel_samples(
    client: Any, store: Any, channels: tuple[str, ...]
) -> dict[tuple[str, str, str], dict[str, float]]:
    from engine.channels.sync import stats_key

    samples: dict[tuple[str, str, str], dict[str, float]] = {}
    for channel in channels:
        stats = await client.hgetall(stats_key(channel))
        for field, name, text, kind, scale in _SYNC:
            samples.setdefault((name, text, kind), {})[channel] = float(stats.get(field, 0)) * scale
    if store is not None:
        count = ("stockguard_channel_oversells", "Order lines sold beyond the channel's ATS",
                 "counter")  # fmt: skip
        units = ("stockguard_channel_oversold_units", "Units sold beyond the channel's ATS",
                 "counter")  # fmt: skip
        samples[count], samples[units] = {}, {}
        for channel, lines, shortfall in await store.oversell_totals():
            samples[count][channel] = float(lines)
            samples[units][channel] = float(shortfall)
    return samples
