"""All five platform simulators at once, with the channel configs that talk to them.

Used by `stockguard simulate channels` (a demo or a rehearsal against a running serve),
`stockguard bench sync`, the sync tests and the oversell rehearsal. Each platform gets
one engine channel (shopify, amazon, ebay, etsy, web), listings for the given SKUs with
made-up platform ids, and fresh secrets shared by its simulator and its connector.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .amazon import PLANS as AMAZON_PLANS
from .base import ChannelConfig, Listing, Platform
from .registry import simulator_class
from .sim.base import Simulator, serving

CHANNELS = {
    "shopify": Platform.SHOPIFY,
    "amazon": Platform.AMAZON,
    "ebay": Platform.EBAY,
    "etsy": Platform.ETSY,
    "web": Platform.WEBHOOK,
}


def _ids(platform: Platform, sku: str, n: int) -> dict[str, str]:
    """Made-up platform identifiers for the n-th SKU."""
    if platform is Platform.SHOPIFY:
        return {"inventory_item_id": str(808950810 + n), "location_id": "655441491"}
    if platform is Platform.AMAZON:
        return {"seller_sku": sku, "marketplace_id": "ATVPDKIKX0DER", "product_type": "LUGGAGE"}
    if platform is Platform.EBAY:
        return {"sku": sku, "offer_id": str(1234567010 + n)}
    if platform is Platform.ETSY:  # a few products per listing, as variations are
        return {"listing_id": str(123456789 + n // 4), "product_id": str(567890123 + n)}
    return {}


def _secrets(platform: Platform) -> tuple[dict[str, str], dict[str, Any]]:
    """(credentials, options) of one channel; the simulator takes both as its options."""
    token = secrets.token_urlsafe(16)
    if platform is Platform.SHOPIFY:
        return {"client_secret": secrets.token_hex(16), "access_token": token}, {
            "shop_domain": "stockguard-sim.myshopify.com"
        }
    if platform is Platform.AMAZON:
        return {"access_token": token}, {"seller_id": "A3TH9S8BH6GOGM", "wait_s": 1}
    if platform is Platform.EBAY:
        return {"access_token": token, "verification_token": secrets.token_hex(16)}, {}
    if platform is Platform.ETSY:
        key = base64.b64encode(secrets.token_bytes(24)).decode()
        return {"keystring": token, "access_token": token, "webhook_secret": f"whsec_{key}"}, {
            "shop_id": "42"
        }
    return {"secret": secrets.token_hex(16)}, {}


_HUGE = 1e9


def lifted(platform: Platform) -> dict[str, Any]:
    """Connector options that lift the platform's documented limits (the simulators' are
    lifted with limits=False): for throughput runs, never for a real platform."""
    if platform is Platform.SHOPIFY:
        return {"restore_per_s": _HUGE, "bucket_points": _HUGE}
    if platform is Platform.AMAZON:  # bulk through the listings feed, its status polled fast
        return {"usage_plans": {op: [_HUGE, _HUGE] for op in AMAZON_PLANS},
                "feed_threshold": 5, "feed_poll_s": 0.01}  # fmt: skip
    if platform is Platform.ETSY:
        return {"qps": 0, "qpd": 0}
    return {"rate_per_s": _HUGE}  # eBay, web


@dataclass
class SimulatedChannel:
    name: str
    config: ChannelConfig
    simulator: Simulator
    url: str = ""


def plan(
    skus: list[str],
    webhook_base: str,
    *,
    limits: bool = True,
    channels: tuple[str, ...] = tuple(CHANNELS),
    options: dict[str, Any] | None = None,
) -> list[SimulatedChannel]:
    """A simulator and a config per channel; configs get their base_url once serving.

    options are added to every channel's connector and simulator options (for example
    {"poll_interval_s": 0} or lifted limits).
    """
    planned = []
    for name in channels:
        platform = CHANNELS[name]
        listings = tuple(Listing(sku, _ids(platform, sku, n)) for n, sku in enumerate(skus))
        credentials, own = _secrets(platform)
        merged = {**own, **({} if limits else lifted(platform)), **(options or {})}
        config = ChannelConfig(name, platform, "", credentials, merged, listings)
        planned.append(SimulatedChannel(name, config, simulator_for(config, webhook_base, limits)))
    return planned


def simulator_for(config: ChannelConfig, webhook_base: str, limits: bool) -> Simulator:
    """The simulator a channel config talks to: the same secrets, listings and options."""
    return simulator_class(config.platform)(  # type: ignore[no-any-return]
        list(config.listings),
        webhook_url=f"{webhook_base}/v1/webhooks/{config.channel}",
        limits=limits,
        options={**config.credentials, **config.options},
    )


@contextlib.asynccontextmanager
async def running(planned: list[SimulatedChannel]) -> AsyncIterator[list[SimulatedChannel]]:
    """Serves every simulator on loopback; each config's base_url points at its simulator."""
    async with contextlib.AsyncExitStack() as stack:
        for channel in planned:
            channel.url = await stack.enter_async_context(serving(channel.simulator.app()))
            options = dict(channel.config.options)
            if channel.config.platform is Platform.EBAY:
                options.setdefault("endpoint_url", channel.simulator.webhook_url)
            channel.config = ChannelConfig(
                channel.name, channel.config.platform, channel.url,
                channel.config.credentials, options, channel.config.listings,
            )  # fmt: skip
        yield planned


def toml(planned: list[SimulatedChannel]) -> str:
    """The [channels.*] tables that point serve at the running simulators."""
    out = []
    for channel in planned:
        c = channel.config
        out.append(f"[channels.{c.channel}]")
        out.append(f'platform = "{c.platform.value}"')
        out.append(f'base_url = "{c.base_url}"')
        out.append("credentials = { " + _inline(c.credentials) + " }")
        if c.options:
            out.append("options = { " + _inline(c.options) + " }")
        for listing in c.listings:
            out.append(f"[[channels.{c.channel}.listings]]")
            out.append(f'sku = "{listing.sku}"')
            out.append("ids = { " + _inline(listing.ids) + " }")
        out.append("")
    return "\n".join(out)


def _inline(values: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return ", ".join(f"{k} = {value(v)}" for k, v in values.items())


def serve_in_child(configs_json: bytes, ports: list[int], webhook_base: str, limits: bool) -> None:
    """A process's main: serves the configs' simulators on the given ports until killed.

    Platforms are remote: a benchmark runs them in a process of their own, so their
    HTTP work does not share a core with the sync it measures."""
    import asyncio

    import msgspec

    configs = msgspec.json.decode(configs_json, type=list[ChannelConfig])

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for config, port in zip(configs, ports, strict=True):
                sim = simulator_for(config, webhook_base, limits)
                await stack.enter_async_context(serving(sim.app(), port))
            await asyncio.Event().wait()

    asyncio.run(main())
