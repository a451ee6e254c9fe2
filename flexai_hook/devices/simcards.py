"""The description of simulated cards that the simulated driver libraries read.

The simulated `libcuda.so.1` and `libnvidia-ml.so.1` (built from `libflexai/sim/`) read
`cards.conf` from the directory named by `FLEXAI_SIM_DIR` (default `/run/flexai/sim`) and keep
their host-wide shared state in the file `state` beside it. This module turns the daemon's
`Card` list (see `devices.simulated_cards`) into that file, and reads it back.

Format of `cards.conf` (docs/simulator.md has the full description)::

    # comment
    card <index> <uuid> <memory-bytes> <name ...>
    set <key> <value>

Card indices run from 0 without gaps; the name is the rest of the line. `set` lines change the
simulator's tunables (`TUNABLES` below lists them with their defaults).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

DEFAULT_SIM_DIR = Path("/run/flexai/sim")
CONFIG_NAME = "cards.conf"
STATE_NAME = "state"
MAX_CARDS = 16

# Tunables the libraries accept, with their built-in defaults.
TUNABLES: Mapping[str, int | str] = {
    "context_bytes": 300 << 20,   # device memory one context costs
    "module_bytes": 2 << 20,      # device memory one loaded module / library costs
    "nvml_pid_offset": 0,         # NVML reports pid + this (pids of another pid namespace)
    "sm_count": 132,              # multiprocessors per card
    "cc_major": 9,                # compute capability
    "cc_minor": 0,
    "launch_ns": 4000,            # shortest kernel
    "block_ns": 10000,            # cost of one wave of blocks of an ordinary kernel
    "queue_depth": 1024,          # launches a stream may have outstanding
    "queue_ahead_ns": 50_000_000, # how far ahead of now a stream may book work
    "util_window_ns": 1_000_000_000,  # NVML utilization sample period
    "driver_version": "580.65.06",
}

_UUID_WORD = re.compile(r"^\S+$")


@dataclass(frozen=True)
class SimCard:
    index: int
    uuid: str
    memory: int
    name: str


class SimConfigError(ValueError):
    pass


def _check_card(card: SimCard) -> None:
    if not 0 <= card.index < MAX_CARDS:
        raise SimConfigError(f"card index {card.index} is outside 0..{MAX_CARDS - 1}")
    if not card.uuid or not _UUID_WORD.match(card.uuid) or len(card.uuid) >= 80:
        raise SimConfigError(f"card {card.index}: uuid {card.uuid!r} must be one word")
    if card.memory <= 0:
        raise SimConfigError(f"card {card.index}: memory must be positive")
    if "\n" in card.name or len(card.name) >= 96:
        raise SimConfigError(f"card {card.index}: name must be one line under 96 characters")


def render_config(cards: Iterable, tunables: Mapping[str, int | str] | None = None) -> str:
    """Text of cards.conf for cards (devices.Card or SimCard: index, uuid, memory, name)."""
    sims = [SimCard(int(c.index), str(c.uuid), int(c.memory), str(c.name)) for c in cards]
    if not sims:
        raise SimConfigError("no card")
    sims.sort(key=lambda c: c.index)
    if [c.index for c in sims] != list(range(len(sims))):
        raise SimConfigError("card indices must be 0..n-1 without gaps")
    lines = ["# flexai simulated cards: card <index> <uuid> <memory-bytes> <name>"]
    for card in sims:
        _check_card(card)
        lines.append(f"card {card.index} {card.uuid} {card.memory} {card.name}".rstrip())
    for key, value in (tunables or {}).items():
        if key not in TUNABLES:
            raise SimConfigError(f"unknown simulator setting {key!r}")
        text = str(value)
        if not text or any(ch.isspace() for ch in text):
            raise SimConfigError(f"setting {key} must be one word")
        lines.append(f"set {key} {text}")
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> tuple[list[SimCard], dict[str, str]]:
    """Cards and settings of a cards.conf text; raises SimConfigError like the libraries."""
    cards: dict[int, SimCard] = {}
    settings: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split(None, 4)
        if words[0] == "card":
            if len(words) < 4:
                raise SimConfigError(f"line {lineno}: card needs index, uuid and memory")
            try:
                index, memory = int(words[1], 0), int(words[3], 0)
            except ValueError:
                raise SimConfigError(f"line {lineno}: index and memory must be numbers") from None
            card = SimCard(index, words[2], memory,
                           words[4] if len(words) > 4 else "flexai simulated GPU")
            _check_card(card)
            if index in cards:
                raise SimConfigError(f"line {lineno}: card {index} given twice")
            cards[index] = card
        elif words[0] == "set":
            if len(words) != 3 or words[1] not in TUNABLES:
                raise SimConfigError(f"line {lineno}: bad setting")
            settings[words[1]] = words[2]
        else:
            raise SimConfigError(f"line {lineno}: unknown keyword {words[0]!r}")
    ordered = [cards[i] for i in sorted(cards)]
    if [c.index for c in ordered] != list(range(len(ordered))):
        raise SimConfigError("card indices must be 0..n-1 without gaps")
    return ordered, settings


def write_sim_dir(path: Path | str, cards: Sequence, tunables: Mapping[str, int | str] | None = None,
                  mode: int = 0o777) -> Path:
    """Create the simulator directory with cards.conf (atomically replaced). The shared
    `state` file is created by the libraries themselves on first use and is left alone, so
    processes already running keep their accounting."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(directory, mode)  # processes of any user share the state file
    except PermissionError:
        pass
    text = render_config(cards, tunables)
    target = directory / CONFIG_NAME
    tmp = directory / f".{CONFIG_NAME}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return directory


def read_sim_dir(path: Path | str) -> tuple[list[SimCard], dict[str, str]]:
    return parse_config((Path(path) / CONFIG_NAME).read_text(encoding="utf-8"))


def sim_library_dir() -> Path:
    """The folder that holds the built simulated libcuda.so.1 and libnvidia-ml.so.1."""
    import flexai_hook

    return Path(flexai_hook.__file__).resolve().parent / "lib" / "sim"


def sim_env(sim_dir: Path | str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which a process loads the simulated libraries for sim_dir."""
    env = dict(os.environ if base is None else base)
    libdir = str(sim_library_dir())
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = libdir + (os.pathsep + old if old else "")
    env["FLEXAI_SIM_DIR"] = str(sim_dir)
    return env
