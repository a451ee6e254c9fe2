"""The card boards flexaid writes for libflexai's compute controllers (flexai_hook/devices/board.py,
libflexai/core/controller.h): the roster's layout and keys match the library's, positions stay put
while a slice is on the card, and flexaid keeps each card's roster and slot files in step with
its ledger across reserve, update, release and restarts."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sysconfig
from pathlib import Path

import pytest

from flexai_hook.devices import board
from flexai_hook.devices.board import Entry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory) -> dict[str, int]:
    """The library's own view of the layout and of a key, compiled from its sources."""
    d = tmp_path_factory.mktemp("boardc")
    src = d / "facts.c"
    src.write_text(r'''
#include <stdio.h>
#include <stddef.h>
#include "controller.h"
int main(void) {
    printf("entry %zu\n", offsetof(struct flexai_roster, entry));
    printf("entry_size %zu\n", sizeof(struct flexai_roster_entry));
    printf("share %zu\n", offsetof(struct flexai_roster_entry, share));
    printf("priority %zu\n", offsetof(struct flexai_roster_entry, priority));
    printf("generation %zu\n", offsetof(struct flexai_roster, generation));
    printf("size %zu\n", sizeof(struct flexai_roster));
    printf("magic %llu\n", (unsigned long long)FLEXAI_ROSTER_MAGIC);
    printf("version %d\n", FLEXAI_BOARD_VERSION);
    printf("slots %d\n", FLEXAI_BOARD_SLOTS);
    printf("slot_file %d\n", FLEXAI_SLOT_FILE_SIZE);
    printf("key %llu\n", (unsigned long long)flexai_ctl_key("0123456789abcdef-slice"));
    return 0;
}
''')
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    exe = d / "facts"
    subprocess.run([*cc, "-std=gnu11", "-D_GNU_SOURCE", f"-I{ROOT / 'libflexai'}",
                    f"-I{ROOT / 'libflexai' / 'core'}", str(src), str(ROOT / "libflexai" / "core" / "controller.c"), "-o", str(exe)], check=True, timeout=120)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_layout_and_key_match_the_library(c_facts):
    assert c_facts["entry"] == board.HEADER.size
    assert c_facts["entry_size"] == board.ENTRY.size
    assert (c_facts["share"], c_facts["priority"]) == (8, 12)
    assert c_facts["generation"] == board.GENERATION_OFFSET
    assert c_facts["size"] == board.ROSTER_SIZE <= board.FILE_SIZE
    assert c_facts["magic"] == board.ROSTER_MAGIC
    assert c_facts["version"] == board.VERSION and c_facts["slots"] == board.SLOTS
    assert c_facts["slot_file"] == board.FILE_SIZE
    assert c_facts["key"] == board.slice_key("0123456789abcdef-slice")


def test_assign_keeps_positions_and_fills_the_lowest_free():
    a, b, c, d = (Entry(k, 10 * k, 1) for k in (1, 2, 3, 4))
    first = board.assign([], {1: a, 2: b, 3: c})
    assert first[:4] == [a, b, c, None]
    # b leaves, d arrives: a and c stay where their libraries found them, d takes b's place
    second = board.assign(first, {1: a, 3: c, 4: d})
    assert second[:4] == [a, d, c, None]
    # a share change rewrites the entry in place
    third = board.assign(second, {1: Entry(1, 55, 2), 3: c, 4: d})
    assert third[0] == Entry(1, 55, 2) and third[1:3] == [d, c]


def test_a_card_past_its_slots_lists_the_first_and_leaves_the_rest_out():
    wanted = {k: Entry(k, 1, 1) for k in range(1, board.SLOTS + 6)}
    slots = board.assign([], wanted)
    assert len(slots) == board.SLOTS and all(slots)
    assert {e.key for e in slots} == set(range(1, board.SLOTS + 1))


def test_roster_image_round_trips_and_rejects_garbage():
    slots = board.assign([], {7: Entry(7, 30, 2)})
    gen, parsed = board.parse_roster(board.roster_image(slots, 12))
    assert gen == 12 and parsed == slots
    assert board.parse_roster(b"\0" * board.ROSTER_SIZE) is None
    assert board.parse_roster(b"short") is None


class R:
    """The fields of a reservation CardBoards reads."""

    def __init__(self, slice_id, compute=30, priority="normal", card=("GPU-a", 0)):
        self.slice_id, self.compute, self.priority = slice_id, compute, priority
        self.card_uuid, self.card_index = card


class Card:
    def __init__(self, uuid, index):
        self.uuid, self.index = uuid, index


def read(path: Path):
    return board.parse_roster(path.read_bytes())


def test_card_boards_follow_reserve_update_release_and_restart(tmp_path):
    boards = tmp_path / "boards"
    cb = board.CardBoards(str(boards), [Card("GPU-a", 0), Card("GPU-b", 1)])
    cb.make()
    assert stat.S_IMODE(boards.stat().st_mode) == 0o700  # host users cannot reach the slot files
    card = boards / "GPU-a"
    assert stat.S_IMODE(card.stat().st_mode) == 0o755
    x, y = R("slice-x", 30), R("slice-y", 20, "high")
    cb.put(x)
    cb.put(y)
    cb.flush()
    gen, slots = read(card / "roster")
    assert gen % 2 == 0
    assert slots[:2] == [Entry(board.slice_key("slice-x"), 30, 1), Entry(board.slice_key("slice-y"), 20, 2)]
    assert stat.S_IMODE((card / "roster").stat().st_mode) == 0o644
    slot = Path(cb.slot_path("GPU-a", 0, "slice-x"))
    assert stat.S_IMODE(slot.stat().st_mode) == 0o666 and slot.read_bytes() == bytes(board.FILE_SIZE)
    assert read(boards / "GPU-b" / "roster")[1] == [None] * board.SLOTS

    # a share change: same place, new share, a later generation
    cb.put(R("slice-x", 45))
    cb.flush()
    gen2, slots = read(card / "roster")
    assert gen2 > gen and slots[0].share == 45 and slots[1].key == board.slice_key("slice-y")

    # flexaid restarts holding y only: y keeps index 1 (its library remembers it), x goes
    slot_y = Path(cb.slot_path("GPU-a", 0, "slice-y"))
    slot_y.write_bytes(b"\1" * board.FILE_SIZE)  # y's live state
    (card / "stray").write_bytes(b"x")
    again = board.CardBoards(str(boards), [Card("GPU-a", 0), Card("GPU-b", 1)])
    again.make()
    again.rebuild([y])
    again.flush()
    gen3, slots = read(card / "roster")
    assert gen3 > gen2
    assert slots[0] is None and slots[1].key == board.slice_key("slice-y")
    assert not slot.exists() and not (card / "stray").exists()
    assert slot_y.read_bytes() == b"\1" * board.FILE_SIZE  # a running slice's state is kept

    again.drop(y)
    again.flush()
    assert read(card / "roster")[1] == [None] * board.SLOTS and not slot_y.exists()


def test_a_damaged_roster_is_rewritten_at_start(tmp_path):
    boards = tmp_path / "boards"
    cb = board.CardBoards(str(boards), [Card("GPU-a", 0)])
    cb.make()
    (boards / "GPU-a" / "roster").write_bytes(b"garbage" * 100)
    board.CardBoards(str(boards), [Card("GPU-a", 0)]).make()
    assert read(boards / "GPU-a" / "roster") is not None


def test_an_unwritable_board_is_logged_and_retried(tmp_path, caplog):
    boards = tmp_path / "boards"
    cb = board.CardBoards(str(boards), [Card("GPU-a", 0)])
    cb.make()
    # a file where the card's directory was: every write there fails (root ignores modes)
    (boards / "GPU-a").rename(tmp_path / "gone")
    (boards / "GPU-a").write_bytes(b"")
    cb.put(R("slice-x"))
    cb.flush()
    assert "cannot write the card board" in caplog.text
    assert cb.dirty == {("GPU-a", 0)}


def test_flexaid_lists_each_slice_on_its_cards_board(make_daemon):
    daemon = make_daemon(memories=("16GiB", "16GiB"))
    boards = daemon.slices_dir.parent / "boards"
    reply = daemon.call({"op": "reserve", "container_id": "web-1", "request": {"fraction": 30, "device": "1"}})
    assert reply["ok"], reply
    res = reply["reservation"]
    card = boards / daemon.cards[1]["uuid"]
    key = board.slice_key(res["slice_id"])
    _, slots = read(card / "roster")
    assert slots[0] == Entry(key, 30, 1)
    assert (card / board.slot_name(key)).stat().st_size == board.FILE_SIZE
    assert read(boards / daemon.cards[0]["uuid"] / "roster")[1] == [None] * board.SLOTS
    assert daemon.call({"op": "update", "container_id": "web-1", "compute": 55})["ok"]
    assert read(card / "roster")[1][0].share == 55
    daemon.restart()  # kept across a restart, at the same place
    assert read(card / "roster")[1][0] == Entry(key, 55, 1)
    assert daemon.call({"op": "release", "container_id": "web-1"})["ok"]
    assert read(card / "roster")[1][0] is None
    assert not (card / board.slot_name(key)).exists()


def test_writes_planned_in_the_loop_are_applied_elsewhere_and_a_failure_is_redone(tmp_path):
    """flexaid plans a batch's board writes in its loop and its writer process applies them
    (writer.execute); a card whose writes failed is read back from disk and written again
    with the next batch."""
    boards = tmp_path / "boards"
    cb = board.CardBoards(str(boards), [Card("GPU-a", 0)])
    cb.make()
    cb.put(R("slice-x"))
    writes = cb.plan()
    assert writes and not (boards / "GPU-a" / board.slot_name(board.slice_key("slice-x"))).exists()
    assert cb.plan() == []  # nothing changed since
    (boards / "GPU-a").rename(tmp_path / "gone")  # the directory vanished under the writer
    (boards / "GPU-a").write_bytes(b"")
    failed = board.apply_writes(writes)
    assert failed == [str(boards / "GPU-a")]
    cb.failed(failed)
    assert cb.files[("GPU-a", 0)] == set() and cb.dirty == {("GPU-a", 0)}
    (boards / "GPU-a").unlink()
    (tmp_path / "gone").rename(boards / "GPU-a")
    assert board.apply_writes(cb.plan()) == []
    _, slots = read(boards / "GPU-a" / "roster")
    assert slots[0].key == board.slice_key("slice-x")
    assert (boards / "GPU-a" / board.slot_name(board.slice_key("slice-x"))).exists()
