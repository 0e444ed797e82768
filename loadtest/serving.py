"""What the rehearsals share: a clean environment for the serve they start, and the
audit of that serve's data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def clean_env() -> dict[str, str]:
    """This environment, less what points elsewhere than the serve we started."""
    stripped = ("REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")
    return {
        k: v for k, v in os.environ.items() if k not in stripped and not k.startswith("STOCKGUARD_")
    }


def audit(data_dir: Path) -> tuple[int, str]:
    """`stockguard audit` on the data dir of a running serve (it shares serve's Valkey)."""
    command = [sys.executable, "-m", "engine.cli", "--data-dir", str(data_dir)]
    command += ["audit", "--wait-s", "30"]
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=120)
    return done.returncode, (done.stdout + done.stderr).rstrip()
