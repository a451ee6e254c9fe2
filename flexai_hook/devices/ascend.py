"""Huawei Ascend NPUs: discovery (DCMI, else `npu-smi info`), device nodes, the Ascend runtime.

An Ascend *chip* is what flexai slices: each chip has its own `/dev/davinciN` node (N is the
chip's physical id), its own HBM and its own AI cores; an A3 "NPU" board carries two chips and
shows them as two rows of `npu-smi info`. Every process using any chip also needs the shared
control nodes `/dev/davinci_manager`, `/dev/devmm_svm` and `/dev/hisi_hdc`.

Two sources, whichever is present, both giving the project's `Card` records:

* DCMI (`libdcmi.so`, Huawei's management library, shipped with the driver) through ctypes:
  `dcmi_init`, `dcmi_get_card_num_list`, `dcmi_get_device_num_in_card`,
  `dcmi_get_device_logic_id`, `dcmi_get_device_phyid_from_logicid`,
  `dcmi_get_device_chip_info`, `dcmi_get_device_hbm_info` / `dcmi_get_device_memory_info_v3`.
* `npu-smi info`, parsed by `parse_npu_smi` (a pure function; the formats it knows are the
  captured outputs under tests/data/ascend/).

`visible_devices_env` (ascend_nodes.py) is the one piece that works beside Huawei's Ascend Docker runtime: see
docs/ascend.md.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import uuid as uuid_mod
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .ascend_nodes import (  # noqa: F401  (re-exported: the node helpers live apart for the start path)
    ASCEND_SHARED_NODES,
    SHARED_NODE_NAMES,
    davinci_paths,
    phy_id_of,
    visible_devices_env,
)
from .card import Card

log = logging.getLogger("flexaid.ascend")

# Where the driver installs libdcmi.so; ctypes' own search (ld.so.cache, LD_LIBRARY_PATH) first.
DCMI_CANDIDATES = (
    "libdcmi.so",
    "/usr/local/dcmi/libdcmi.so",
    "/usr/local/Ascend/driver/lib64/driver/libdcmi.so",
    "/usr/local/Ascend/driver/lib64/libdcmi.so",
)
NPU_SMI_CANDIDATES = ("/usr/local/sbin/npu-smi", "/usr/local/bin/npu-smi")
MIB = 1 << 20
_UUID_NS = uuid_mod.UUID("5b0c7a39-95a4-4c35-9d0e-6f6c65786169")


class AscendError(RuntimeError):
    """Ascend discovery failed; the message says where and why in one line."""


class NpuSmiFormatError(AscendError):
    pass


@dataclass(frozen=True)
class Chip:
    """One row pair of `npu-smi info` (or one DCMI device): a sliceable Ascend chip."""

    npu: int              # NPU (board) id as npu-smi shows it
    chip: int             # chip index on that board
    phy_id: int           # physical id: the N of /dev/davinciN, what ASCEND_VISIBLE_DEVICES takes
    logic_id: int | None  # logical id (ACL's device id on the host), when the source says
    name: str             # chip name as reported, e.g. "910B", "310P3", "Ascend910"
    bus_id: str           # PCI address, "" when unknown
    memory_mib: int       # device memory (HBM, or DDR on 310-class chips), MiB
    health: str = "OK"


# --------------------------------------------------------------------------- npu-smi


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _usage(text: str) -> list[tuple[int, int]]:
    """The `used / total` pairs of a cell, in order."""
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*/\s*(\d+)", text)]


def parse_npu_smi(text: str) -> list[Chip]:
    """Chips from the text of `npu-smi info`.

    Knows the 910B/A2 layout (`Chip | Bus-Id | ... Memory-Usage(MB) HBM-Usage(MB)`), the A3
    layout with a `Phy-Id` column (two chips per NPU) and the 310/310P layout with a `Device`
    (logic id) column and no HBM. A table with no device rows gives []; anything that is not
    such a table raises NpuSmiFormatError naming what was wrong.
    """
    if not text or not text.strip():
        raise NpuSmiFormatError("npu-smi info printed nothing")
    lines = text.splitlines()
    head = next((i for i, l in enumerate(lines)
                 if l.lstrip().startswith("|") and re.search(r"\bNPU\b", l) and "Name" in l
                 and "Health" in l), None)
    if head is None or head + 1 >= len(lines):
        first = next((l.strip() for l in lines if l.strip()), "")
        raise NpuSmiFormatError(f"npu-smi info printed no device table (first line: {first[:80]!r})")
    sub = _cells(lines[head + 1])
    if len(sub) < 3 or sub[0].split()[:1] != ["Chip"] or "Bus-Id" not in sub[1]:
        raise NpuSmiFormatError(
            f"npu-smi info: unknown table header {lines[head + 1].strip()[:100]!r}")
    second = sub[0].split()[1:]  # [], ["Device"] or ["Phy-Id"]
    id_column = second[0].lower() if second else ""
    has_hbm = "HBM-Usage" in sub[2]

    chips: list[Chip] = []
    pending: tuple[int, str, str] | None = None  # (npu, name, health) of an NPU row
    for lineno in range(head + 2, len(lines)):
        line = lines[lineno].strip()
        if not line.startswith("|"):
            continue
        if "Process id" in line or "Process name" in line:
            break  # the process table follows the device table
        cells = _cells(line)
        if len(cells) < 3:
            continue
        first = cells[0].split()
        if pending is None:
            if len(first) < 2 or not first[0].isdigit():
                raise NpuSmiFormatError(f"npu-smi info line {lineno + 1}: expected an NPU row, got {line[:80]!r}")
            pending = (int(first[0]), " ".join(first[1:]), cells[1])
            continue
        npu, name, health = pending
        pending = None
        if not first or not all(t.isdigit() for t in first):
            raise NpuSmiFormatError(f"npu-smi info line {lineno + 1}: expected the chip row of NPU {npu}, "
                                    f"got {line[:80]!r}")
        chip = int(first[0])
        second_id = int(first[1]) if len(first) > 1 else None
        pairs = _usage(cells[2])
        if not pairs:
            raise NpuSmiFormatError(f"npu-smi info line {lineno + 1}: no memory usage in {cells[2]!r}")
        memory = pairs[0][1]
        if has_hbm and len(pairs) > 1 and pairs[1][1] > 0:
            memory = pairs[1][1]
        if memory <= 0:
            raise NpuSmiFormatError(f"npu-smi info line {lineno + 1}: NPU {npu} chip {chip} reports no memory")
        if id_column == "phy-id" and second_id is not None:
            phy, logic = second_id, None
        elif id_column == "device" and second_id is not None:
            phy, logic = second_id, second_id  # logic id; equals the physical id on a full host
        else:
            phy, logic = npu if chip == 0 else None, None
            if phy is None:
                raise NpuSmiFormatError(f"npu-smi info line {lineno + 1}: NPU {npu} has chip {chip} but the "
                                        "table gives no Phy-Id column to name its /dev/davinci node")
        chips.append(Chip(npu=npu, chip=chip, phy_id=phy, logic_id=logic, name=name,
                          bus_id=cells[1], memory_mib=memory, health=health))
    if pending is not None:
        raise NpuSmiFormatError(f"npu-smi info ends after the NPU row of NPU {pending[0]} (output cut short?)")
    phys = [c.phy_id for c in chips]
    if len(set(phys)) != len(phys):
        raise NpuSmiFormatError(f"npu-smi info: physical ids repeat ({phys})")
    return chips


# --------------------------------------------------------------------------- cards


def card_name(chip_name: str) -> str:
    name = chip_name.strip() or "NPU"
    return name if name.lower().startswith("ascend") else f"Ascend {name}"


def chip_uuid(chip: Chip) -> str:
    """A stable id for a chip: from its PCI address, else its physical id (npu-smi shows none)."""
    key = chip.bus_id.lower() if chip.bus_id else f"phy{chip.phy_id}"
    return f"NPU-{uuid_mod.uuid5(_UUID_NS, key)}"


def chips_to_cards(chips: Iterable[Chip], dev_dir: str = "/dev") -> list[Card]:
    """flexai cards, indexed 0.. in physical-id order."""
    cards = []
    for index, chip in enumerate(sorted(chips, key=lambda c: c.phy_id)):
        cards.append(Card(
            index=index,
            uuid=chip_uuid(chip),
            name=card_name(chip.name),
            memory=chip.memory_mib * MIB,
            device_paths=davinci_paths(os.path.join(dev_dir, f"davinci{chip.phy_id}")),
            backend="ascend",
        ))
    return cards


# --------------------------------------------------------------------------- npu-smi runner


def find_npu_smi() -> str | None:
    found = shutil.which("npu-smi")
    if found:
        return found
    return next((p for p in NPU_SMI_CANDIDATES if os.access(p, os.X_OK)), None)


def npu_smi_chips(binary: str | None = None, run: Callable = subprocess.run) -> list[Chip]:
    binary = binary or find_npu_smi()
    if not binary:
        raise AscendError("npu-smi is not installed")
    try:
        proc = run([binary, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AscendError(f"{binary} info failed: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise AscendError(f"{binary} info exited with {proc.returncode}: "
                          f"{detail[0] if detail else 'no output'}")
    return parse_npu_smi(proc.stdout)


# --------------------------------------------------------------------------- DCMI


class _ChipInfo(ctypes.Structure):
    _fields_ = [("chip_type", ctypes.c_ubyte * 32), ("chip_name", ctypes.c_ubyte * 32),
                ("chip_ver", ctypes.c_ubyte * 32), ("aicore_cnt", ctypes.c_uint)]


class _HbmInfo(ctypes.Structure):
    _fields_ = [("memory_size", ctypes.c_ulonglong), ("freq", ctypes.c_uint),
                ("memory_usage", ctypes.c_ulonglong), ("temp", ctypes.c_int),
                ("bandwith_util_rate", ctypes.c_uint)]


class _MemoryInfoV3(ctypes.Structure):
    _fields_ = [("memory_size", ctypes.c_ulonglong), ("memory_available", ctypes.c_ulonglong),
                ("freq", ctypes.c_uint), ("hugepagesize", ctypes.c_ulong),
                ("hugepages_total", ctypes.c_ulong), ("hugepages_free", ctypes.c_ulong),
                ("utiliza", ctypes.c_uint), ("reserve", ctypes.c_ubyte * 60)]


class _PcieInfoAll(ctypes.Structure):
    _fields_ = [("venderid", ctypes.c_uint), ("subvenderid", ctypes.c_uint),
                ("deviceid", ctypes.c_uint), ("subdeviceid", ctypes.c_uint),
                ("domain", ctypes.c_int), ("bdf_busid", ctypes.c_uint),
                ("bdf_deviceid", ctypes.c_uint), ("bdf_funcid", ctypes.c_uint),
                ("reserve", ctypes.c_ubyte * 32)]


class Dcmi:
    """A thin shell over libdcmi.so: only the calls discovery needs, each checked."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.lib = lib
        self.path = path

    @classmethod
    def load(cls, candidates: Sequence[str] = DCMI_CANDIDATES) -> "Dcmi":
        """The first loadable libdcmi.so; AscendError (one line, every place tried) if none."""
        tried = []
        for path in candidates:
            try:
                return cls(ctypes.CDLL(path), path)
            except OSError as exc:
                tried.append(f"{path}: {str(exc).split(':')[-1].strip() or exc}")
        raise AscendError("libdcmi.so not found (" + "; ".join(tried) + ")")

    def _call(self, name: str, *args) -> None:
        fn = getattr(self.lib, name, None)
        if fn is None:
            raise AscendError(f"{self.path} has no {name}")
        fn.restype = ctypes.c_int
        rc = fn(*args)
        if rc != 0:
            raise AscendError(f"{name} failed with DCMI error {rc}")

    def _has(self, name: str) -> bool:
        return getattr(self.lib, name, None) is not None

    def chips(self) -> list[Chip]:
        c_int, c_uint = ctypes.c_int, ctypes.c_uint
        self._call("dcmi_init")
        count = c_int(0)
        ids = (c_int * 64)()
        self._call("dcmi_get_card_num_list", ctypes.byref(count), ids, c_int(64))
        chips = []
        for card in list(ids)[: max(0, min(count.value, 64))]:
            n = c_int(0)
            self._call("dcmi_get_device_num_in_card", c_int(card), ctypes.byref(n))
            for dev in range(n.value):
                logic = c_int(-1)
                self._call("dcmi_get_device_logic_id", ctypes.byref(logic), c_int(card), c_int(dev))
                phy = c_uint(logic.value)
                if self._has("dcmi_get_device_phyid_from_logicid"):
                    self._call("dcmi_get_device_phyid_from_logicid", c_uint(logic.value), ctypes.byref(phy))
                info = _ChipInfo()
                self._call("dcmi_get_device_chip_info", c_int(card), c_int(dev), ctypes.byref(info))
                name = bytes(info.chip_name).split(b"\0", 1)[0].decode(errors="replace")
                memory = 0
                if self._has("dcmi_get_device_hbm_info"):
                    hbm = _HbmInfo()
                    try:
                        self._call("dcmi_get_device_hbm_info", c_int(card), c_int(dev), ctypes.byref(hbm))
                        memory = int(hbm.memory_size)
                    except AscendError:
                        memory = 0  # 310-class chips have no HBM: DDR below
                if memory == 0:
                    mem = _MemoryInfoV3()
                    self._call("dcmi_get_device_memory_info_v3", c_int(card), c_int(dev), ctypes.byref(mem))
                    memory = int(mem.memory_size)
                bus = ""
                if self._has("dcmi_get_device_pcie_info_v2"):
                    pcie = _PcieInfoAll()
                    try:
                        self._call("dcmi_get_device_pcie_info_v2", c_int(card), c_int(dev), ctypes.byref(pcie))
                        bus = (f"{pcie.domain:04X}:{pcie.bdf_busid:02X}:"
                               f"{pcie.bdf_deviceid:02X}.{pcie.bdf_funcid:X}")
                    except AscendError:
                        bus = ""
                if memory <= 0:
                    raise AscendError(f"DCMI card {card} device {dev} reports no memory")
                chips.append(Chip(npu=card, chip=dev, phy_id=phy.value, logic_id=logic.value,
                                  name=name, bus_id=bus, memory_mib=memory))
        return chips


# --------------------------------------------------------------------------- discovery


def ascend_cards(dcmi_candidates: Sequence[str] = DCMI_CANDIDATES,
                 npu_smi: str | None = None) -> tuple[list, str]:
    """(cards, why-none): DCMI if libdcmi.so loads, else `npu-smi info`, else no cards.

    Never raises for a host without Ascend: the second element explains an empty list.
    """
    reasons = []
    try:
        dcmi = Dcmi.load(dcmi_candidates)
    except AscendError as exc:
        reasons.append(str(exc))
    else:
        try:
            chips = dcmi.chips()
            if chips:
                return chips_to_cards(chips), ""
            reasons.append(f"DCMI ({dcmi.path}) lists no chip")
        except AscendError as exc:
            reasons.append(f"DCMI ({dcmi.path}): {exc}")
    try:
        chips = npu_smi_chips(npu_smi)
        if chips:
            return chips_to_cards(chips), ""
        reasons.append("npu-smi info lists no chip")
    except AscendError as exc:
        reasons.append(str(exc))
    return [], "; ".join(reasons)
