"""Ascend discovery: npu-smi parser on captured outputs, the DCMI shell, device nodes, the spec.

Pure tests (no Ascend driver here), except the DCMI shell test which builds a tiny fake
libdcmi.so with the C compiler when one is present.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from flexai_hook.devices import ascend
from flexai_hook.devices import inventory as devices
from flexai_hook.oci import spec as spec_mod
from flexai_hook import validation
from flexai_hook.devices.ascend import AscendError, NpuSmiFormatError, parse_npu_smi
from flexai_hook.reservation import Reservation

DATA = Path(__file__).parent / "data" / "ascend"
MIB = 1 << 20


def fixture(name: str) -> str:
    return (DATA / name).read_text()


# ----------------------------------------------------------------------------- npu-smi parser


def test_910b_eight_cards():
    chips = parse_npu_smi(fixture("npu-smi-910b-8.txt"))
    assert [c.phy_id for c in chips] == list(range(8))
    assert all(c.memory_mib == 32768 and c.name == "910B" for c in chips)  # HBM, not DDR
    assert chips[0].bus_id == "0000:C1:00.0" and chips[0].logic_id is None
    cards = ascend.chips_to_cards(chips)
    assert cards[3].device_paths == ("/dev/davinci3", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
    assert cards[3].memory == 32768 * MIB and cards[3].name == "Ascend 910B" and cards[3].backend == "ascend"
    assert len({c.uuid for c in cards}) == 8 and all(c.uuid.startswith("NPU-") for c in cards)


def test_single_910b4_with_process_table_and_sparse_numbering():
    chips = parse_npu_smi(fixture("npu-smi-910b4-single.txt"))
    assert len(chips) == 1  # the process table is not read as devices
    assert chips[0].npu == 2 and chips[0].phy_id == 2 and chips[0].memory_mib == 32768
    card = ascend.chips_to_cards(chips)[0]
    assert card.index == 0 and card.device_paths[0] == "/dev/davinci2"


def test_a3_two_chips_per_npu_uses_phy_id():
    chips = parse_npu_smi(fixture("npu-smi-a3-phyid.txt"))
    assert [(c.npu, c.chip, c.phy_id) for c in chips] == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]
    assert all(c.memory_mib == 65536 for c in chips)
    assert ascend.chips_to_cards(chips)[0].name == "Ascend910"


def test_310p_uses_device_column_and_ddr():
    chips = parse_npu_smi(fixture("npu-smi-310p3.txt"))
    assert [(c.phy_id, c.logic_id, c.memory_mib) for c in chips] == [(0, 0, 21534), (1, 1, 21534)]
    chips = parse_npu_smi(fixture("npu-smi-310-na.txt"))  # power "NA", NPU id 6, device 0
    assert [(c.npu, c.phy_id, c.memory_mib) for c in chips] == [(6, 0, 21525)]


def test_table_without_devices_is_empty():
    assert parse_npu_smi(fixture("npu-smi-no-device.txt")) == []


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty", "", "printed nothing"),
        ("blank", "\n \n", "printed nothing"),
        ("driver error", None, "no device table"),
        ("truncated", None, "cut short"),
        ("garbage", "random text\nno pipes here\n", "no device table"),
    ],
)
def test_malformed_output_is_a_clear_error(name, text, message):
    if text is None:
        text = fixture({"driver error": "npu-smi-driver-error.txt", "truncated": "npu-smi-truncated.txt"}[name])
    with pytest.raises(NpuSmiFormatError, match=message) as info:
        parse_npu_smi(text)
    assert "\n" not in str(info.value)


def test_unknown_header_and_bad_rows_are_errors():
    text = fixture("npu-smi-910b-8.txt")
    with pytest.raises(NpuSmiFormatError, match="unknown table header"):
        parse_npu_smi(text.replace("| Chip  ", "| Chips "))
    with pytest.raises(NpuSmiFormatError, match="expected the chip row"):
        parse_npu_smi(text.replace("| 0                         | 0000:81", "| x                         | 0000:81"))
    with pytest.raises(NpuSmiFormatError, match="no memory usage"):
        parse_npu_smi(text.replace("2411 / 15665      4    / 32768", "NA                         "))


def test_npu_smi_runner(tmp_path):
    smi = tmp_path / "npu-smi"
    smi.write_text(f"#!/bin/sh\n[ \"$1\" = info ] && cat {DATA / 'npu-smi-310p3.txt'}\n")
    smi.chmod(0o755)
    assert [c.phy_id for c in ascend.npu_smi_chips(str(smi))] == [0, 1]
    broken = tmp_path / "npu-smi-broken"
    broken.write_text("#!/bin/sh\necho 'dcmi module initialize failed. ret is -8005' >&2\nexit 255\n")
    broken.chmod(0o755)
    with pytest.raises(AscendError, match="exited with 255: dcmi module initialize failed"):
        ascend.npu_smi_chips(str(broken))


# ----------------------------------------------------------------------------- discovery


def test_no_ascend_host_explains_itself(tmp_path):
    cards, why = ascend.ascend_cards(dcmi_candidates=(str(tmp_path / "libdcmi.so"),),
                                     npu_smi=str(tmp_path / "npu-smi"))
    assert cards == []
    assert "libdcmi.so not found" in why and "npu-smi" in why


def test_discover_ascend_backend_fails_closed(monkeypatch):
    monkeypatch.setattr(ascend, "ascend_cards", lambda: ([], "libdcmi.so not found; npu-smi is not installed"))
    with pytest.raises(devices.InventoryError, match="backend is ascend but no Ascend chip was found: libdcmi"):
        devices.discover("ascend", [{"memory": "1GiB"}])
    # auto falls through to the simulated cards
    monkeypatch.setattr(devices, "nvml_cards", lambda: [])
    assert devices.discover("auto", [{"memory": "1GiB"}])[0].backend == "simulated"


def test_discover_auto_prefers_ascend_over_simulated(monkeypatch):
    monkeypatch.setattr(devices, "nvml_cards", lambda: [])
    real = ascend.chips_to_cards(parse_npu_smi(fixture("npu-smi-910b-8.txt")))
    monkeypatch.setattr(ascend, "ascend_cards", lambda: (real, ""))
    assert devices.discover("auto", [{"memory": "1GiB"}]) == real


FAKE_DCMI = r"""
#include <string.h>
struct chip { unsigned char type[32], name[32], ver[32]; unsigned int aicore; };
struct hbm { unsigned long long size; unsigned int freq; unsigned long long usage; int temp; unsigned int bw; };
int dcmi_init(void) { return 0; }
int dcmi_get_card_num_list(int *n, int *list, int len) { (void)len; *n = 2; list[0] = 1; list[1] = 4; return 0; }
int dcmi_get_device_num_in_card(int card, int *n) { (void)card; *n = 1; return 0; }
int dcmi_get_device_logic_id(int *logic, int card, int dev) { *logic = (card == 1 ? 0 : 1) + dev; return 0; }
int dcmi_get_device_phyid_from_logicid(unsigned logic, unsigned *phy) { *phy = logic ? 5 : 2; return 0; }
int dcmi_get_device_chip_info(int card, int dev, struct chip *c) {
    (void)card; (void)dev; memset(c, 0, sizeof *c); strcpy((char *)c->name, "910B3"); c->aicore = 20; return 0; }
int dcmi_get_device_hbm_info(int card, int dev, struct hbm *h) {
    (void)dev; memset(h, 0, sizeof *h); h->size = card == 1 ? 65536 : 0; return card == 1 ? 0 : -8255; }
struct mem { unsigned long long size, avail; unsigned int freq; unsigned long hp, ht, hf; unsigned int u; unsigned char r[60]; };
int dcmi_get_device_memory_info_v3(int card, int dev, struct mem *m) {
    (void)card; (void)dev; memset(m, 0, sizeof *m); m->size = 21534; return 0; }
"""


def test_dcmi_shell_with_a_fake_library(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the fake libdcmi.so")
    src = tmp_path / "fake_dcmi.c"
    src.write_text(FAKE_DCMI)
    lib = tmp_path / "libdcmi.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    chips = ascend.Dcmi.load((str(tmp_path / "absent.so"), str(lib))).chips()
    assert [(c.npu, c.logic_id, c.phy_id, c.memory_mib, c.name) for c in chips] == [
        (1, 0, 2, 65536, "910B3"), (4, 1, 5, 21534, "910B3")]  # card 4: no HBM, DDR size
    cards, why = ascend.ascend_cards(dcmi_candidates=(str(lib),), npu_smi="/nonexistent/npu-smi")
    assert why == "" and [c.device_paths[0] for c in cards] == ["/dev/davinci2", "/dev/davinci5"]


def test_dcmi_absent_is_a_skip_path_message(tmp_path):
    with pytest.raises(AscendError, match=r"^libdcmi.so not found \(.*absent.so"):
        ascend.Dcmi.load((str(tmp_path / "absent.so"),))


# ----------------------------------------------------------------------------- simulated cards


def test_simulated_ascend_cards_get_davinci_nodes():
    cards = devices.simulated_cards([
        {"memory": "64GiB", "kind": "ascend"},
        {"memory": "32GiB", "kind": "ascend", "device": "/dev/npu-test/davinci7", "name": "sim 910B"},
        {"memory": "16GiB"},
    ])
    assert cards[0].device_paths == (
        "/dev/flexai-sim-ascend/davinci0", "/dev/flexai-sim-ascend/davinci_manager",
        "/dev/flexai-sim-ascend/devmm_svm", "/dev/flexai-sim-ascend/hisi_hdc")
    assert cards[0].uuid.startswith("NPU-") and cards[0].backend == "simulated"
    assert cards[1].device_paths[0] == "/dev/npu-test/davinci7" and cards[1].name == "sim 910B"
    assert cards[2].device_paths == ("/dev/flexai-sim2",)


def test_daemon_config_schema_knows_ascend():
    ok = {"backend": "ascend", "simulated": {"cards": [{"memory": "1GiB", "kind": "ascend"}]}}
    assert validation.problem("daemon-config.schema.json", ok) is None
    bad = {"simulated": {"cards": [{"memory": "1GiB", "kind": "tpu"}]}}
    assert validation.problem("daemon-config.schema.json", bad) is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes needs root")
def test_sim_nodes_for_two_ascend_cards_share_control_nodes(tmp_path, monkeypatch):
    base = Path("/dev") / f"flexai-test-ascend-{os.getpid()}"
    try:
        cards = devices.simulated_cards([
            {"memory": "1GiB", "kind": "ascend", "device": f"{base}/davinci0"},
            {"memory": "1GiB", "kind": "ascend", "device": f"{base}/davinci1"},
        ])
        devices.ensure_sim_nodes(cards)
        devices.ensure_sim_nodes(cards)  # idempotent
        names = sorted(os.listdir(base))
        assert names == ["davinci0", "davinci1", "davinci_manager", "devmm_svm", "hisi_hdc"]
        assert all(stat.S_ISCHR(os.stat(base / n).st_mode) for n in names)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------- spec / env


def _reservation(paths):
    return Reservation(container_id="c1", slice_id="s1", card_index=0, card_uuid="NPU-x", card_name="Ascend 910B",
                       card_memory=64 << 30, memory_bytes=16 << 30, compute=25, priority="normal",
                       device_paths=tuple(paths), slice_dir="/run/flexai/slices/s1")


def test_visible_devices_env():
    assert ascend.visible_devices_env(ascend.davinci_paths("/dev/davinci5")) == (("ASCEND_VISIBLE_DEVICES", "5"),)
    assert ascend.visible_devices_env(("/dev/nvidia0", "/dev/nvidiactl")) == ()
    assert ascend.phy_id_of("/dev/davinci_manager") is None


def test_spec_for_an_ascend_reservation_lists_each_node_once():
    paths = ascend.davinci_paths("/dev/davinci3")
    nodes = tuple(spec_mod.DeviceNode(path=p, type="c", major=m, minor=n)
                  for p, (m, n) in zip(paths, [(236, 3), (237, 0), (238, 0), (239, 0)]))
    res = _reservation(paths)
    hook = spec_mod.Hook(path="/usr/bin/flexai-hook", args=("flexai-hook", "poststop"))
    base = {
        "process": {"env": ["PATH=/bin", "ASCEND_VISIBLE_DEVICES=0-7"]},
        "linux": {
            "devices": [{"path": "/dev/davinci_manager", "type": "c", "major": 237, "minor": 0}],
            "resources": {"devices": [{"allow": False, "access": "rwm"},
                                      {"allow": True, "type": "c", "major": 237, "minor": 0, "access": "rwm"}]},
        },
    }
    injection = spec_mod.injection_for(res, nodes, hook)  # ASCEND_VISIBLE_DEVICES included
    once = spec_mod.apply(base, injection)
    twice = spec_mod.apply(once, injection)
    assert once == twice
    dev_paths = [d["path"] for d in once["linux"]["devices"]]
    assert sorted(dev_paths) == sorted(paths) and len(dev_paths) == 4
    rules = once["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    allowed = [(r["major"], r["minor"]) for r in rules if r.get("allow")]
    assert sorted(allowed) == [(236, 3), (237, 0), (238, 0), (239, 0)]
    env = once["process"]["env"]
    assert [e for e in env if e.startswith("ASCEND_VISIBLE_DEVICES=")] == ["ASCEND_VISIBLE_DEVICES=3"]


def test_fixture_readme_names_the_sources():
    assert "910B" in fixture("README.md") and "310P3" in fixture("README.md")
