"""A short headless locust rehearsal against a real `stockguard serve`, then the audit.

    python loadtest/rehearse.py [--users 50] [--spawn-rate 10] [--run-time 25s]

It starts `stockguard serve` on a free loopback port in a temporary data dir (none of
REDIS_URL, DATABASE_URL or STOCKGUARD_* reach it), creates a checkout key with
`stockguard keys create`, runs loadtest/locustfile.py headless with the checkout key
for the shoppers and the operator key from serve's banner for the setup and the
operator users, runs `stockguard audit` against the same Valkey and ledger while serve
still runs, and stops serve. Exit status 1 if locust reported a failure or the audit
found a violation. CI runs this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from serving import audit, clean_env

from api.bench_http import running_serve

HERE = Path(__file__).resolve().parent


def create_key(data_dir: Path, role: str) -> str:
    command = [sys.executable, "-m", "engine.cli", "--data-dir", str(data_dir), "keys"]
    command += ["create", "--role", role, "--name", f"rehearsal-{role}"]
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"rehearse: keys create failed:\n{done.stderr}")
    return done.stdout.strip()


def wait_until_accepted(url: str, key: str, timeout_s: float = 10.0) -> None:
    """A key created a moment ago: the server knows it once a reload has read it."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {key}"}
    while httpx.get(f"{url}/v1/whoami", headers=headers).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"rehearse: the new key is still refused after {timeout_s:g} s")
        time.sleep(0.2)


def locust(url: str, checkout: str, operator: str, args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless"]
    command += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time]
    command += ["--host", url, "--only-summary"]
    env = clean_env() | {"STOCKGUARD_KEY": checkout, "STOCKGUARD_OPERATOR_KEY": operator}
    print(f"rehearse: {' '.join(command[2:])}", flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="locust users at most")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second")
    parser.add_argument("--run-time", default="25s", help="how long locust runs (25s, 1m)")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="stockguard-rehearsal-") as tmp,
        running_serve(Path(tmp), 1, "everysec") as (url, _port, operator),
    ):
        print(f"rehearse: stockguard serve at {url}, data in {tmp}", flush=True)
        checkout = create_key(Path(tmp), "checkout")
        wait_until_accepted(url, checkout)
        locust_code = locust(url, checkout, operator, args)
        audit_code, report = audit(Path(tmp))
        print(report, flush=True)
    verdict = "ok" if not (locust_code or audit_code) else "FAILED"
    print(f"rehearse: {verdict} (locust exit {locust_code}, audit exit {audit_code})")
    return 1 if locust_code or audit_code else 0


if __name__ == "__main__":
    sys.exit(main())
