"""`serve` settings: flags over the environment over the TOML file over defaults; and the
structured request log."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
from helpers import Api

from api.logs import JsonFormatter
from api.serve import Options, add_arguments, resolve
from engine.config import Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_without_flags_environment_or_file() -> None:
    assert resolve(parse(), environ={}) == Options()


def test_flags_win_over_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "stockguard.toml"
    config.write_text('port = 9001\nworkers = 3\nhost = "0.0.0.0"\naccess-log = false\n')
    environ = {"STOCKGUARD_CONFIG": str(config), "STOCKGUARD_WORKERS": "2", "REDIS_URL": ""}
    options = resolve(parse("--workers", "4"), environ=environ)
    assert (options.port, options.workers, options.host) == (9001, 4, "0.0.0.0")
    assert options.access_log is False and options.redis_url is None
    options = resolve(parse(), environ={**environ, "STOCKGUARD_ACCESS_LOG": "yes"})
    assert (options.workers, options.access_log) == (2, True)
    assert resolve(parse("--no-sweeper"), environ={}).sweeper is False


def test_jemalloc_is_on_unless_turned_off() -> None:
    assert resolve(parse(), environ={}).settings().jemalloc is True
    assert resolve(parse("--no-jemalloc"), environ={}).settings().jemalloc is False
    assert resolve(parse(), environ={"STOCKGUARD_JEMALLOC": "0"}).jemalloc is False
    assert Settings.from_env({}).jemalloc is True
    assert Settings.from_env({"STOCKGUARD_JEMALLOC": "off"}).jemalloc is False


def test_bad_settings_are_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("prot = 9001\n")
    with pytest.raises(SystemExit, match="prot"):
        resolve(parse("--config", str(config)), environ={})
    with pytest.raises(SystemExit, match="port"):
        resolve(parse(), environ={"STOCKGUARD_PORT": "eighty"})


async def test_every_request_is_one_json_log_line_with_its_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api.app.user_middleware[0].kwargs["access_log"] = True  # the fixture turns it off
    api.app.middleware_stack = api.app.build_middleware_stack()
    with caplog.at_level(logging.INFO, logger="stockguard.http"):
        r = await api.http.get("/v1/whoami", headers={"X-Request-Id": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    [record] = [rec for rec in caplog.records if rec.name == "stockguard.http"]
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "request" and line["request_id"] == "req-42"
    assert (line["route"], line["status"], line["method"]) == ("whoami", 200, "GET")
    assert line["level"] == "info" and line["ms"] >= 0 and line["ts"].endswith("Z")
