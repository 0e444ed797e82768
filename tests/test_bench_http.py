"""`stockguard bench http` in small, run as a user would: its rows, no errors, the ratio last."""

from __future__ import annotations

import re
import subprocess
import sys

NUMBERS = (
    r" +[\d,]+ +([\d,]+) +(\d+\.\d\d) +(\d+\.\d\d) +([\d,]+)$"  # requests req/s p50 p99 errors
)
ROW = re.compile(r"^(bare GET /v1/whoami|hold POST /v1/holds)" + NUMBERS)
STOCK_CHECK = re.compile(r"stock check: [\d,]+ holds placed, ATS web [\d,]+ \(ok\)$")


def test_bench_http_prints_both_paths_and_the_ratio_last() -> None:
    command = [sys.executable, "-m", "engine.cli", "bench", "http"]
    done = subprocess.run(
        [*command, "--seconds", "2", "--concurrency", "8"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rows = {m[1]: m.groups()[1:] for line in lines if (m := ROW.match(line))}
    assert list(rows) == ["bare GET /v1/whoami", "hold POST /v1/holds"], done.stdout
    for rate, p50, p99, errors in rows.values():
        assert int(rate.replace(",", "")) > 0
        assert float(p99) >= float(p50) > 0
        assert errors == "0"
    assert sum(bool(STOCK_CHECK.search(line)) for line in lines) == 1, done.stdout
    assert re.fullmatch(r"hold/bare http ratio: \d+\.\d\d", lines[-1]), done.stdout
