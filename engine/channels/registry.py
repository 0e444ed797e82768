"""Which class speaks for which platform, and channel configs from the TOML file.

The config file's [channels.<name>] tables (the same file `serve --config` reads):

    [channels.shopify]
    platform = "shopify"
    base_url = "https://example.myshopify.com"
    credentials = { client_secret = "env:SHOPIFY_SECRET", access_token = "env:SHOPIFY_TOKEN" }
    options = { shop_domain = "example.myshopify.com" }
    [[channels.shopify.listings]]
    sku = "MUG-BLUE"
    ids = { inventory_item_id = "808950810", location_id = "655441491" }
    # or: listings_csv = "shopify-listings.csv"   (columns: sku, then one per platform id)

The table's name is the engine channel it sells for, unless `channel = "..."` says otherwise.
"""

from __future__ import annotations

import csv
import importlib
from pathlib import Path
from typing import Any

import httpx
import msgspec

from .base import ChannelConfig, Connector, Platform

_CLASSES = {
    Platform.SHOPIFY: "shopify:Shopify",
    Platform.AMAZON: "amazon:Amazon",
    Platform.EBAY: "ebay:Ebay",
    Platform.ETSY: "etsy:Etsy",
    Platform.WEBHOOK: "webhook:Webhook",
}


def _load(platform: Platform, package: str, suffix: str) -> Any:
    module, prefix = _CLASSES[platform].split(":")
    return getattr(importlib.import_module(f"{package}.{module}"), prefix + suffix)


def connector_class(platform: Platform) -> type[Connector]:
    return _load(platform, "engine.channels", "Connector")  # type: ignore[no-any-return]


def simulator_class(platform: Platform) -> Any:
    return _load(platform, "engine.channels.sim", "Simulator")


def connect(config: ChannelConfig, http: httpx.AsyncClient) -> Connector:
    return connector_class(config.platform)(config, http)


class ConfigError(ValueError):
    """A [channels.*] table that cannot be used; the message names it and why."""


def _listings_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [{"sku": row.pop("sku"), "ids": {k: v for k, v in row.items() if v}} for row in rows]


def channel_configs(tables: dict[str, Any], base_dir: Path = Path()) -> list[ChannelConfig]:
    """ChannelConfigs from the [channels.*] tables; raises ConfigError on a bad one."""
    configs = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"channels.{name}: must be a table")
        table = {"channel": name, **table}
        if csv_path := table.pop("listings_csv", None):
            try:
                table["listings"] = _listings_csv(base_dir / csv_path)
            except (OSError, KeyError, UnicodeDecodeError) as error:
                raise ConfigError(f"channels.{name}: listings_csv {csv_path}: {error}") from None
        try:
            configs.append(msgspec.convert(table, ChannelConfig))
        except msgspec.ValidationError as error:
            raise ConfigError(f"channels.{name}: {error}") from None
    return configs
