"""The load-test tools, run as a user would: the flash-sale rehearsal in small, against a
`stockguard serve` of its own, and the locustfile's users.

The locustfile is imported in a child process: importing locust patches the standard
library for gevent, which must not happen to the test process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

LOADTEST = Path(__file__).resolve().parent.parent / "loadtest"


def test_flash_sale_sells_exactly_the_units_and_no_customer_more_than_the_limit() -> None:
    command = [sys.executable, str(LOADTEST / "flash_sale.py"), "--buyers", "300", "--units", "40"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "flash-sale oversold: 0 limit-violations: 0 sold: 40", done.stdout
    assert "  audit: ok" in lines, done.stdout
    rows = {
        line.split()[0]: line.split()[1:] for line in lines if line.startswith(("join ", "poll "))
    }
    assert set(rows) == {"join", "poll"}, done.stdout  # count, p50 ms, p99 ms, ...
    assert int(rows["join"][0].replace(",", "")) >= 300
    assert any(re.match(r"admitted [\d,]+ buyers at [\d,]+/s ", line) for line in lines)
    assert any(line.startswith("sold-out notice: the last unit went, and ") for line in lines)


def test_flash_sale_exits_1_when_the_units_cannot_all_sell() -> None:
    command = [sys.executable, str(LOADTEST / "flash_sale.py"), "--buyers", "5", "--units", "40"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("flash-sale oversold: 0 limit-violations: 0 sold: "), done.stdout
    assert int(last.rpartition(" ")[2]) <= 5 * 2 < 40


USERS = """
import json, locust, locustfile
users = {
    name: {"weight": cls.weight, "tasks": sorted({t.__name__ for t in cls.tasks}),
           "fast_http": issubclass(cls, locust.FastHttpUser)}
    for name, cls in vars(locustfile).items()
    if isinstance(cls, type) and issubclass(cls, locust.User) and not cls.abstract
}
print(json.dumps(users))
"""


def test_the_locustfile_has_the_checkout_flash_sale_and_operator_users() -> None:
    done = subprocess.run(
        [sys.executable, "-c", USERS], capture_output=True, text=True, timeout=60, cwd=LOADTEST
    )
    assert done.returncode == 0, done.stderr
    users = json.loads(done.stdout.splitlines()[-1])
    assert users == {
        "CheckoutUser": {
            "weight": 10,
            "tasks": ["abandon", "browse", "buy", "walk_away"],
            "fast_http": True,
        },
        "FlashSaleUser": {"weight": 3, "tasks": ["queue_and_buy"], "fast_http": True},
        "OperatorUser": {"weight": 1, "tasks": ["adjust", "count", "receive"], "fast_http": True},
    }
