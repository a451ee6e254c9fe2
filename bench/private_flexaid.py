"""A private flexaid for the benches: its own socket, state and slice folders under the bench's
temporary directories, simulated cards, started from this interpreter's environment and
waited for until it answers `status`. Not a bench itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flexai_hook import client

BIN = Path(sys.executable).parent


def start(tmp: Path, cards: list[dict], slices_dir: Path | None = None, log_level: str = "error",
          **extra) -> tuple[subprocess.Popen, str]:
    """flexaid over `cards` (flexaid.json's simulated.cards entries): (its process, its socket).
    The ledger goes in `tmp` (fsync'd as in production); `slices_dir` defaults to tmp/slices.
    `extra`: more top-level config keys (e.g. reconcile)."""
    config = {"socket": str(tmp / "flexaid.sock"), "socket_group": "root", "state_dir": str(tmp / "state"),
              "slices_dir": str(slices_dir or tmp / "slices"), "backend": "simulated",
              "simulated": {"cards": cards}, **extra}
    (tmp / "flexaid.json").write_text(json.dumps(config))
    proc = subprocess.Popen([str(BIN / "flexaid"), "--config", str(tmp / "flexaid.json"), "--log-level", log_level])
    for _ in range(200):
        try:
            client.call({"op": "status"}, config["socket"], timeout=1)
            return proc, config["socket"]
        except client.DaemonUnavailable:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise SystemExit(f"flexaid did not start (config {tmp / 'flexaid.json'})")


def stop(proc: subprocess.Popen, cards: list[dict], timeout: float = 30) -> None:
    """SIGTERM flexaid (SIGKILL after `timeout`) and remove the device nodes the simulated
    backend made for `cards`, so a bench leaves /dev as it found it."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for card in cards:
        try:
            os.unlink(card["device"])
        except (FileNotFoundError, KeyError):
            pass
