"""CDI specs as pure functions: the YAML nvidia-ctk writes, picking the reserved card's device,
applying its edits under the slice's own, and where the driver comes from without a spec
(flexai_hook/oci/yamlsubset.py, cdi.py, driver.py, and prepare.prepare_container over a spec dir)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flexai_hook.oci import cdi
from flexai_hook.oci import cdi_annotations
from flexai_hook.oci import cdi_store
from flexai_hook.oci import driver
from flexai_hook.oci import prepare
from flexai_hook.oci import yamlsubset
from flexai_hook.oci import spec as spec_mod
from flexai_hook.oci.bundle import minimal_spec
from flexai_hook.reservation import Reservation

DATA = Path(__file__).parent / "data" / "cdi"
UUID0 = "GPU-7a3c1f0e-2b4d-4e8f-9a1b-5c6d7e8f9a0b"
UUID1 = "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
CHAR = cdi.HostNode(type="c", major=195, minor=0, file_mode=0o666)


def plain(value):
    """yamlsubset's values as plain Python (Plain scalars as the text written)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, yamlsubset.Plain) else value


def reservation(backend="nvml", index=0, uuid=UUID0, paths=("/dev/nvidia0",), slice_dir="/run/flexai/slices/abc"):
    return Reservation(container_id="c1", slice_id="abc", card_index=index, card_uuid=uuid, card_name="card",
                       card_memory=16 << 30, memory_bytes=4 << 30, compute=25, priority="normal",
                       device_paths=paths, slice_dir=slice_dir, backend=backend)


def spec_text(devices: str, common: str = "", version: str = "0.5.0", kind: str = "nvidia.com/gpu") -> str:
    return f"cdiVersion: {version}\nkind: {kind}\ndevices:\n{devices}" + (f"containerEdits:\n{common}" if common else "")


# ------------------------------------------------------------------------ the YAML subset

@pytest.mark.parametrize("name", ["nvidia-ctk.yaml", "nvidia-ctk-v2.yaml"])
def test_both_nvidia_ctk_layouts_read_as_pyyaml_reads_them(name):
    yaml = pytest.importorskip("yaml")  # PyYAML: the test extra, an independent reader
    text = (DATA / name).read_text()
    assert plain(yamlsubset.load(text)) == yaml.safe_load(text)
    assert plain(yamlsubset.load(text)) == json.loads((DATA / "nvidia-ctk.json").read_text())


@pytest.mark.parametrize("text", [
    "a: 1\nb:\n- x\n- 'y'\n- \"z\\tw\"\nc:\n  d: [1, two, \"3\"]\n  e: {}\n",
    # (0o17 too is 15 for go-yaml, whose ints go through Go's ParseInt; PyYAML keeps it a string)
    "- a: 1\n  b: [x]\n- - nested\n  - list\n- ~\n- 017\n- 0x1f\n- yes\n- 1.5\n- ''\n",
    "k: it's # a comment\nq: 'a # not one'\nr: \"b # nor this\"\n",
    "---\nk: v\n...\n# only comments after the end\n",
    "a:\n    - b: 1\n      c:\n        - d\n    - e\n",
])
def test_the_subset_agrees_with_pyyaml(text):
    yaml = pytest.importorskip("yaml")
    ours = yamlsubset.load(text)

    def resolved(v):
        if isinstance(v, dict):
            return {k: resolved(x) for k, x in v.items()}
        if isinstance(v, list):
            return [resolved(x) for x in v]
        return yamlsubset.resolve(v)

    assert resolved(ours) == yaml.safe_load(text)


@pytest.mark.parametrize("text, said", [
    ("a: &x 1\nb: *x\n", "line 1"),
    ("a: |\n  block\n", "line 1"),
    ("a: !!str 1\n", "line 1"),
    ("a:\n\t- b\n", "line 2: a tab"),
    ("a: 'open\n", "line 1: a quoted scalar does not end"),
    ("a: [1, 2\n", "line 1: a flow collection must end"),
    ("a: 1\na: 2\n", "line 2: key 'a' appears twice"),
    ("a: 1\n  b: 2\n", "line 2: unexpected indentation"),
    ("---\na: 1\n---\nb: 2\n", "line 3: a second YAML document"),
    ("a: 1\n...\nb: 2\n", "line 3: content after the document's end"),
])
def test_what_the_subset_refuses_it_names_by_line(text, said):
    with pytest.raises(yamlsubset.YamlError) as info:
        yamlsubset.load(text)
    assert said in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("name", ["nvidia-ctk.yaml", "nvidia-ctk-v2.yaml", "nvidia-ctk.json"])
def test_nvidia_ctk_spec_parses_the_same_in_each_format(name):
    spec = cdi.parse((DATA / name).read_text(), str(DATA / name))
    reference = cdi.parse((DATA / "nvidia-ctk.yaml").read_text(), "ref")
    assert spec.kind == "nvidia.com/gpu" and spec.version == "0.5.0"
    assert cdi.device_names(spec) == ("0", UUID0, "1", UUID1, "all")
    assert spec.edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    assert [m.container_path for m in spec.edits.mounts][:2] == [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.65.06"]
    assert spec.edits.mounts[0].options == ("ro", "nosuid", "nodev", "bind")
    assert {h.hook_name for h in spec.edits.hooks} == {"createContainer"}
    zero = spec.devices[0]
    assert zero.edits.hooks[1].args[-3:] == ("755", "--path", "/dev/dri")  # "755" stays a string
    # the same content whatever the layout (devices compared by value, not by the file they came from)
    assert (spec.devices, spec.edits) == (reference.devices, reference.edits)


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s.replace("kind: nvidia.com/gpu", "kind: nvidia"), "kind"),
    (lambda s: s.replace("cdiVersion: 0.5.0", "cdiVersion: 9.9.9"), "cdiVersion"),
    (lambda s: s.replace("cdiVersion: 0.5.0", "cdiVersion: 0.4.0"), "cdiVersion"),  # names start with digits
    (lambda s: s.replace("hookName: createContainer", "hookName: preStart", 1), "devices[0].containerEdits.hooks[0].hookName"),
    (lambda s: s.replace("path: /usr/bin/nvidia-cdi-hook", "path: nvidia-cdi-hook", 1), "devices[0].containerEdits.hooks[0].path"),
    (lambda s: s.replace("            - path: /dev/nvidia1\n", "            - paht: /dev/nvidia1\n", 1), "devices[2].containerEdits.deviceNodes[0].paht"),
    (lambda s: s.replace("    - name: \"1\"\n", "    - name: \"0\"\n"), "devices[2].name"),
    (lambda s: s.replace("        - NVIDIA_VISIBLE_DEVICES=void", "        - =void"), "containerEdits.env[0]"),
    (lambda s: s.replace("          containerPath: /usr/bin/nvidia-smi\n", ""), "containerEdits.mounts[3].containerPath"),
    (lambda s: s.replace("    - name: all\n      containerEdits:\n", "    - name: all\n      containerEdits: {}\n      x:\n"), "devices[4]"),
])
def test_a_malformed_spec_is_one_line_naming_file_and_field(mutate, field):
    text = mutate((DATA / "nvidia-ctk.yaml").read_text())
    with pytest.raises(cdi.CdiError) as info:
        cdi.parse(text, "/etc/cdi/nvidia.yaml")
    message = str(info.value)
    assert message.startswith(f"/etc/cdi/nvidia.yaml: {field}") and "\n" not in message, message
    assert info.value.kind in ("nvidia.com/gpu", "nvidia")  # told apart from other vendors' broken specs


def test_broken_yaml_names_the_file_and_line():
    with pytest.raises(cdi.CdiError) as info:
        cdi.parse("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n - name: 'x\n", "/etc/cdi/x.yaml")
    assert str(info.value).startswith("/etc/cdi/x.yaml: not a readable CDI spec: line 4")
    assert info.value.kind is None


def test_a_string_field_keeps_what_was_written_and_numbers_resolve_as_go_does():
    text = spec_text("- name: 0\n  containerEdits:\n    deviceNodes:\n    - path: /dev/x\n      fileMode: 0666\n"
                     "      major: 0x1f\n      type: c\n")
    (device,) = cdi.parse(text, "f").devices
    assert device.name == "0"
    assert device.edits.device_nodes[0] == cdi.DeviceNode(path="/dev/x", type="c", major=31, file_mode=0o666)
    with pytest.raises(cdi.CdiError, match=r"f: devices\[0\].containerEdits.deviceNodes\[0\].uid: must be an integer"):
        cdi.parse(text.replace("type: c", "uid: abc"), "f")


# ----------------------------------------------------------------------------- selection

def nvidia_spec(path="/etc/cdi/nvidia.yaml", priority=0):
    return cdi.parse((DATA / "nvidia-ctk.yaml").read_text(), path, priority)


def test_the_cards_uuid_then_its_index_never_all():
    spec = nvidia_spec()
    by_uuid = cdi.resolve_device([spec], ["nvidia.com/gpu"], [UUID1, "1"])
    assert by_uuid.device.name == UUID1 and by_uuid.name == f"nvidia.com/gpu={UUID1}"
    assert cdi.resolve_device([spec], ["nvidia.com/gpu"], ["GPU-other", "1"]).device.name == "1"
    assert cdi.resolve_device([spec], ["nvidia.com/gpu"], ["GPU-other", "7"]) is None
    assert cdi.resolve_device([spec], ["huawei.com/npu"], [UUID0]) is None
    edits = by_uuid.edits()
    assert edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)  # the spec's common edits come first
    assert [n.path for n in edits.device_nodes][-1] == "/dev/nvidia1"


def test_a_later_directory_wins_and_the_same_one_conflicts():
    early, late = nvidia_spec("/etc/cdi/nvidia.yaml", 0), nvidia_spec("/var/run/cdi/nvidia.yaml", 1)
    assert cdi.resolve_device([late, early], ["nvidia.com/gpu"], ["0"]).spec.path == "/var/run/cdi/nvidia.yaml"
    twin = nvidia_spec("/etc/cdi/nvidia-copy.yaml", 0)
    with pytest.raises(cdi.CdiError) as info:
        cdi.resolve_device([early, twin], ["nvidia.com/gpu"], ["0"])
    assert "both define CDI device nvidia.com/gpu=0" in str(info.value) and "/etc/cdi/nvidia-copy.yaml" in str(info.value)


# ------------------------------------------------------------------------------ applying

def edits_of(text: str) -> cdi.ContainerEdits:
    spec = cdi.parse(text, "/etc/cdi/t.yaml")
    return cdi.merge(spec.edits, spec.devices[0].edits)


FULL = spec_text(
    "- name: dev\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia0\n"
    "    - path: /dev/nvidiactl\n      hostPath: /dev/real-ctl\n      permissions: rw\n"
    "    - path: /dev/given\n      type: b\n      major: 7\n      minor: 1\n      uid: 5\n"
    "    mounts:\n    - hostPath: /host/lib\n      containerPath: /usr/lib/x86_64-linux-gnu\n      options: [ro, rbind]\n"
    "    hooks:\n    - hookName: createRuntime\n      path: /bin/rt\n    - hookName: poststart\n      path: /bin/ps\n"
    "      args: [ps, one]\n      env: [A=1]\n      timeout: 5\n"
    "    additionalGids: [44, 0]\n",
    "  env:\n  - PATH=/cdi/bin\n  - NEW=1\n  mounts:\n  - hostPath: /host/deep\n"
    "    containerPath: /usr/lib/x86_64-linux-gnu/nvidia/deep\n    type: bind\n    options: [ro, bind]\n"
    "  hooks:\n  - hookName: createContainer\n    path: /usr/bin/nvidia-cdi-hook\n    args: [nvidia-cdi-hook, update-ldcache]\n",
    version="0.7.0")
HOST = {"/dev/nvidia0": CHAR, "/dev/real-ctl": cdi.HostNode(type="c", major=195, minor=255, file_mode=0o660)}


def test_edits_land_where_oci_wants_them():
    base = minimal_spec(["sh"], env=["KEEP=1"])  # and PATH
    base["mounts"].append({"destination": "/usr/lib/x86_64-linux-gnu/nvidia/deep", "type": "bind", "source": "/old"})
    out = cdi.apply(base, edits_of(FULL), HOST, "/etc/cdi/t.yaml")
    env = out["process"]["env"]
    assert env[:2] == ["PATH=/cdi/bin", "KEEP=1"] and env[-1] == "NEW=1"  # replaced in place, then appended
    assert out["linux"]["devices"] == [
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0, "fileMode": 0o666},
        {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255, "fileMode": 0o660},
        {"path": "/dev/given", "type": "b", "major": 7, "minor": 1, "uid": 5},  # fully given: no host node needed
    ]
    rules = out["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert rules[1:] == [{"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rwm"},
                         {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rw"},
                         {"allow": True, "type": "b", "major": 7, "minor": 1, "access": "rwm"}]
    dests = [m["destination"] for m in out["mounts"]]
    # the spec's mount replaced the old one at its destination; parents before children
    assert dests.index("/usr/lib/x86_64-linux-gnu") < dests.index("/usr/lib/x86_64-linux-gnu/nvidia/deep")
    assert [m for m in out["mounts"] if m["destination"].endswith("/deep")] == [
        {"destination": "/usr/lib/x86_64-linux-gnu/nvidia/deep", "source": "/host/deep", "type": "bind",
         "options": ["ro", "bind"]}]
    depth = [os.path.normpath(d).count("/") for d in dests]
    assert depth == sorted(depth)
    assert out["hooks"] == {
        "createContainer": [{"path": "/usr/bin/nvidia-cdi-hook", "args": ["nvidia-cdi-hook", "update-ldcache"]}],
        "createRuntime": [{"path": "/bin/rt"}],
        "poststart": [{"path": "/bin/ps", "args": ["ps", "one"], "env": ["A=1"], "timeout": 5}],
    }
    assert out["process"]["user"]["additionalGids"] == [44]  # 0 is ignored, as the spec says
    assert cdi.apply(out, edits_of(FULL), HOST) == out  # a bundle started again: nothing more
    assert base["process"]["env"][1:] == ["KEEP=1"] and "/cdi/" not in base["process"]["env"][0]  # input kept


def test_unknown_oci_fields_survive_and_a_user_owns_unowned_nodes():
    base = minimal_spec(["sh"])
    base["process"]["user"] = {"uid": 1000, "gid": 1000}
    base["vendorThing"] = {"x": [1, 2]}
    base["linux"]["namespaces"].append({"type": "user"})
    out = cdi.apply(base, edits_of(FULL), HOST)
    assert out["vendorThing"] == {"x": [1, 2]}
    nodes = {d["path"]: d for d in out["linux"]["devices"]}
    assert nodes["/dev/nvidia0"]["uid"] == 1000 and nodes["/dev/given"]["uid"] == 5
    lib = next(m for m in out["mounts"] if m["destination"] == "/usr/lib/x86_64-linux-gnu")
    assert lib["options"] == ["ro", "rbind", "ridmap"]  # user namespace: id-mapped, as the engines do


@pytest.mark.parametrize("host, said", [
    ({}, "device node /dev/nvidia0 does not exist on this host"),
    ({**HOST, "/dev/nvidia0": cdi.HostNode(type="b", major=1, minor=1, file_mode=0o600)}, "is type 'c' in the spec"),
    ({**HOST, "/dev/nvidia0": cdi.HostNode(type="", major=0, minor=0, file_mode=0o644)}, "is not a device node"),
])
def test_a_node_that_cannot_be_completed_is_one_line(host, said):
    edits = edits_of(FULL.replace("    - path: /dev/nvidia0\n", "    - path: /dev/nvidia0\n      type: c\n", 1)
                     if "type 'c'" in said else FULL)
    with pytest.raises(cdi.CdiError) as info:
        cdi.apply(minimal_spec(["sh"]), edits, host, "/etc/cdi/t.yaml")
    assert said in str(info.value) and str(info.value).startswith("/etc/cdi/t.yaml: ")


# ----------------------------------------------------- where the driver comes from (driver.plan)

SIM_UUID = "GPU-00000000-0000-4000-8000-000000000001"


def sim_spec(uuid=SIM_UUID, path="/t/sim.yaml"):
    return cdi.parse(spec_text(f"- name: {uuid}\n  containerEdits:\n    deviceNodes:\n    - path: /dev/flexai-sim0\n"
                               "      type: c\n      major: 1\n      minor: 3\n"), path)


def test_plan_for_a_simulated_card():
    res = reservation(backend="simulated", uuid=SIM_UUID, paths=("/dev/flexai-sim0",))
    on = driver.DriverSettings()
    off = driver.DriverSettings(sim_driver_mounts="off")
    assert driver.plan(res, (), (), on) == driver.DriverPlan(sim_libraries=True)  # as before CDI
    with_cdi = driver.plan(res, (sim_spec(),), (), on)
    assert with_cdi.cdi.device.name == SIM_UUID and not with_cdi.sim_libraries
    assert with_cdi.env == (("NVIDIA_VISIBLE_DEVICES", "void"),)
    # a real card's spec (index names) never applies to a simulated card
    assert driver.plan(res, (nvidia_spec(),), (), on).sim_libraries
    alone = driver.plan(res, (), (), off)  # switched off: a simulated card is a real one
    assert not alone.sim_libraries and "no CDI spec for nvidia.com/gpu" in alone.notice


def test_plan_for_a_real_card_without_a_spec_says_what_to_run_or_chains():
    res = reservation(backend="nvml", index=1, uuid=UUID1, paths=("/dev/nvidia1", "/dev/nvidiactl"))
    said = driver.plan(res, (), (), driver.DriverSettings())
    assert said.notice.startswith("no CDI spec for nvidia.com/gpu in /etc/cdi, /var/run/cdi: ")
    assert "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`" in said.notice and "\n" not in said.notice
    assert said.env == (("NVIDIA_VISIBLE_DEVICES", UUID1),) and not said.runtime and not said.sim_libraries
    chained = driver.plan(res, (), (), driver.DriverSettings(chain_without_cdi="nvidia-container-runtime"))
    assert chained == driver.DriverPlan(runtime="nvidia-container-runtime", env=(("NVIDIA_VISIBLE_DEVICES", UUID1),))
    # already going through nvidia's runtime (install docker --default over nvidia): it adds the driver
    assert not driver.plan(res, (), (), driver.DriverSettings(), "/usr/bin/nvidia-container-runtime").notice
    found = driver.plan(res, (nvidia_spec(),), (), driver.DriverSettings())
    assert found.cdi.device.name == UUID1 and not found.notice


def test_plan_refuses_a_spec_without_the_card_and_a_broken_one_of_the_vendor():
    res = reservation(backend="nvml", index=3, uuid="GPU-gone", paths=("/dev/nvidia3",))
    with pytest.raises(cdi.CdiError) as info:
        driver.plan(res, (nvidia_spec(),), (), driver.DriverSettings())
    message = str(info.value)
    assert message.startswith("/etc/cdi/nvidia.yaml: no CDI device for card 3 (GPU-gone)")
    assert "looked for GPU-gone, 3, gpu3" in message and "regenerate it: nvidia-ctk cdi generate" in message
    broken = cdi.CdiError("/etc/cdi/nvidia.yaml: devices[0].name: missing", kind="nvidia.com/gpu")
    with pytest.raises(cdi.CdiError, match=r"^/etc/cdi/nvidia.yaml: devices\[0\].name: missing"):
        driver.plan(res, (), (broken,), driver.DriverSettings())
    other = cdi.CdiError("/etc/cdi/intel.yaml: kind: ...", kind="intel.com/gpu")
    assert driver.plan(res, (), (other,), driver.DriverSettings()).notice  # another vendor's: not ours


def test_plan_for_ascend_chips():
    res = reservation(backend="ascend", index=0, uuid="NPU-1", paths=("/dev/davinci3", "/dev/davinci_manager"))
    assert driver.device_names(res) == ("NPU-1", "3", "davinci3")
    spec = cdi.parse(spec_text("- name: davinci3\n  containerEdits:\n    mounts:\n"
                               "    - hostPath: /usr/local/Ascend/driver\n      containerPath: /usr/local/Ascend/driver\n",
                               kind="huawei.com/Ascend910"), "/etc/cdi/ascend.yaml")
    found = driver.plan(res, (spec,), (), driver.DriverSettings())
    assert found.cdi.device.name == "davinci3" and found.env == ()
    said = driver.plan(res, (), (), driver.DriverSettings())
    assert "Ascend driver" in said.notice and "ascend-docker-runtime" in said.notice and said.env == ()
    # flexai already runs Huawei's runtime next (docs/ascend.md): it mounts the driver, nothing to say
    chained = "/usr/local/Ascend/Ascend-Docker-Runtime/ascend-docker-runtime"
    assert driver.plan(res, (), (), driver.DriverSettings(), chained) == driver.DriverPlan()


@pytest.mark.parametrize("settings, said", [
    ({"cdi_spec_dirs": "etc/cdi"}, "cdi_spec_dirs: 'etc/cdi' is not allowed; expected absolute directories"),
    ({"cdi_spec_dirs": ["/etc/cdi"]}, "cdi_spec_dirs: ['/etc/cdi'] is not allowed"),
    ({"sim_driver_mounts": "no"}, "sim_driver_mounts: 'no' is not allowed; expected auto or off"),
    ({"chain_without_cdi": "nvidia container runtime"}, "chain_without_cdi: 'nvidia container runtime'"),
])
def test_driver_settings_follow_the_runtime_config_schema(settings, said):
    jsonschema = pytest.importorskip("jsonschema")
    from flexai_hook import validation

    schema = validation.load_schema("runtime-config.schema.json")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(settings, schema)
    with pytest.raises(driver.DriverConfigError) as info:
        driver.settings_of(settings)
    assert str(info.value).startswith(said)
    good = {"cdi_spec_dirs": "/a:/b/", "chain_without_cdi": "/usr/bin/nvidia-container-runtime",
            "sim_driver_mounts": "off", "runtime": "runc", "socket": "/run/x.sock"}
    jsonschema.validate(good, schema)
    assert driver.settings_of(good) == driver.DriverSettings(
        cdi_spec_dirs=("/a", "/b"), chain_without_cdi="/usr/bin/nvidia-container-runtime", sim_driver_mounts="off")


# ------------------------------------ both start paths' function: prepare.prepare_container

@pytest.fixture
def slice_dir(tmp_path):
    d = tmp_path / "slices" / "abc"
    d.mkdir(parents=True)
    return d


def prepared(tmp_path, slice_dir, spec_yaml: str | None, **settings):
    cdi_dir = tmp_path / "cdi"
    cdi_dir.mkdir(exist_ok=True)
    if spec_yaml is not None:
        (cdi_dir / "sim.yaml").write_text(spec_yaml)
    res = reservation(backend="simulated", uuid=SIM_UUID, paths=("/dev/null",), slice_dir=str(slice_dir))
    base = minimal_spec(["sh"], env=["FLEXAI_FRACTION=0.25", "FLEXAI_SLICE_FILE=/mine"])
    return prepare.prepare_container(base, res, "/bin/flexai-hook", None,
                                     {"cdi_spec_dirs": str(cdi_dir), **settings})


SIM_CDI = spec_text(
    f"- name: {SIM_UUID}\n  containerEdits:\n    deviceNodes:\n    - path: /dev/flexai-card\n      hostPath: /dev/null\n",
    "  env:\n  - NVIDIA_VISIBLE_DEVICES=void\n  - FLEXAI_SLICE_FILE=/from-cdi\n  - CDI_ONLY=1\n"
    "  mounts:\n  - hostPath: /tmp\n    containerPath: /etc/ld.so.preload\n    options: [ro, bind]\n"
    "  - hostPath: /etc/hostname\n    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06\n    options: [ro, bind]\n"
    "  - hostPath: /tmp\n    containerPath: /run/flexai\n    options: [rbind]\n"
    "  hooks:\n  - hookName: createContainer\n    path: /bin/true\n    args: [true, ldcache]\n")


def test_cdi_goes_in_under_the_slices_own_edits(tmp_path, slice_dir):
    out = prepared(tmp_path, slice_dir, SIM_CDI)
    assert not out.notice and not out.runtime
    spec = out.spec
    env = spec["process"]["env"]
    # flexai's variables win over the spec's; the spec's own ones stay
    assert "FLEXAI_SLICE_FILE=/run/flexai/slice.conf" in env and "FLEXAI_SLICE_FILE=/from-cdi" not in env
    assert "CDI_ONLY=1" in env and "NVIDIA_VISIBLE_DEVICES=void" in env
    by_dest = {}
    for m in spec["mounts"]:
        by_dest.setdefault(m["destination"], []).append(m)
    # one mount per destination, flexai's where both want it
    assert all(len(v) == 1 for v in by_dest.values())
    assert by_dest["/etc/ld.so.preload"][0]["source"].endswith("ld.so.preload")
    assert by_dest["/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06"][0]["source"] == "/etc/hostname"
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.1" not in by_dest  # no simulator libraries: CDI has the card
    dests = [m["destination"] for m in spec["mounts"]]
    # the spec's /run/flexai is mounted first; the slice's files go on top of it
    assert dests.index("/run/flexai") < dests.index(spec_mod.SLICE_FILE_IN_CONTAINER)
    assert "/run/flexai/sim" in by_dest  # the simulated cards' state, whoever brings the driver
    node = next(d for d in spec["linux"]["devices"] if d["path"] == "/dev/flexai-card")
    null = os.stat("/dev/null")
    assert (node["major"], node["minor"]) == (os.major(null.st_rdev), os.minor(null.st_rdev))
    assert spec["hooks"]["createContainer"] == [{"path": "/bin/true", "args": ["true", "ldcache"]}]
    assert spec["hooks"]["poststop"][-1]["path"] == "/bin/flexai-hook"
    again = prepared(tmp_path, slice_dir, SIM_CDI).spec
    assert prepare.prepare_container(spec, reservation(backend="simulated", uuid=SIM_UUID, paths=("/dev/null",),
                                                       slice_dir=str(slice_dir)),
                                     "/bin/flexai-hook", None, {"cdi_spec_dirs": str(tmp_path / "cdi")}).spec == again


def test_without_a_spec_a_simulated_card_keeps_its_simulator_unless_switched_off(tmp_path, slice_dir):
    from flexai_hook.devices import library

    lib = f"{library.driver_dir_in_container()}/libcuda.so.1"
    kept = prepared(tmp_path, slice_dir, None)
    assert lib in [m["destination"] for m in kept.spec["mounts"]] and not kept.notice
    off = prepared(tmp_path, slice_dir, None, sim_driver_mounts="off")
    assert lib not in [m["destination"] for m in off.spec["mounts"]]
    assert off.notice.startswith(f"no CDI spec for nvidia.com/gpu in {tmp_path / 'cdi'}: ")
    assert f"NVIDIA_VISIBLE_DEVICES={SIM_UUID}" in off.spec["process"]["env"]
    chained = prepared(tmp_path, slice_dir, None, sim_driver_mounts="off", chain_without_cdi="nvidia-container-runtime")
    assert chained.runtime == "nvidia-container-runtime" and not chained.notice


@pytest.mark.parametrize("text, said", [
    (SIM_CDI.replace("hookName: createContainer", "hookName: afterStart"), "hooks[0].hookName: 'afterStart'"),
    (SIM_CDI.replace(f"- name: {SIM_UUID}", "- name: GPU-someone-else"), "no CDI device for card 0"),
    (SIM_CDI.replace("hostPath: /dev/null", "hostPath: /dev/flexai-no-such-node"),
     "device node /dev/flexai-no-such-node does not exist"),
])
def test_a_bad_spec_for_the_card_stops_the_container_in_one_line(tmp_path, slice_dir, text, said):
    with pytest.raises(prepare.PrepareError) as info:
        prepared(tmp_path, slice_dir, text, sim_driver_mounts="off")
    message = str(info.value)
    assert said in message and str(tmp_path / "cdi" / "sim.yaml") in message and "\n" not in message


def test_spec_files_are_read_again_when_they_change(tmp_path):
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "a.yaml").write_text(spec_text("- name: x\n  containerEdits:\n    env: [A=1]\n"))
    (d / "notes.txt").write_text("not a spec")
    (d / "sub.yaml").mkdir()
    first = cdi_store.load([str(d), str(tmp_path / "missing")])
    assert [s.path for s in first.specs] == [str(d / "a.yaml")] and first.errors == ()
    assert cdi_store.load([str(d)]).specs[0] is first.specs[0]  # parsed once
    (d / "a.yaml").write_text(spec_text("- name: x\n  containerEdits:\n    env: [A=2]\n"))
    os.utime(d / "a.yaml", ns=(1, 1))
    assert cdi_store.load([str(d)]).specs[0].devices[0].edits.env == ("A=2",)
    (d / "b.json").write_text("{not json")
    (broken,) = cdi_store.load([str(d)]).errors
    assert str(broken).startswith(f"{d / 'b.json'}: not a readable CDI spec") and broken.kind is None


# ------------------------------------------------ CDI devices named in cdi.k8s.io/ annotations


CLAIM = "flexai.io/gpu=2f1d-uid-gpu-0"


@pytest.mark.parametrize("device, parts", [
    (CLAIM, ("flexai.io/gpu", "2f1d-uid-gpu-0")),
    ("nvidia.com/gpu=0", ("nvidia.com/gpu", "0")),
    ("nvidia.com/gpu=GPU-7a3c:mig.1", ("nvidia.com/gpu", "GPU-7a3c:mig.1")),
    ("a/b=c", ("a/b", "c")),
    ("vendor_x.io/class.sub=n", ("vendor_x.io/class.sub", "n")),
    ("nvidia.com/gpu", None),  # no name
    ("gpu=0", None),  # no vendor
    ("/dev/nvidia0", None),
    ("nvidia.com/gpu=", None),
    ("1nvidia.com/gpu=0", None),  # a vendor starts with a letter
    ("nvidia.com/gpu-=0", None),  # and a class ends with a letter or digit
    ("nvidia.com/gpu=-0", None),
    ("nvidia.com/gpu=0:", None),
    ("nvidia.com/gpu=a b", None),
    ("nvidia.com/g/pu=0", None),
    (" nvidia.com/gpu=0", None),  # no spaces: CDI's ParseAnnotations splits on "," alone
])
def test_qualified_names_follow_cdis_rules(device, parts):
    assert cdi_annotations.qualified(device) == parts


def test_annotations_name_devices_in_key_order_each_once():
    annotations = {"cdi.k8s.io/z-plugin_b": "nvidia.com/gpu=1,nvidia.com/gpu=0",
                   "cdi.k8s.io/gpu.flexai.io_2f1d-uid": CLAIM,
                   "cdi.k8s.io/a_dup": "nvidia.com/gpu=0",
                   "io.kubernetes.cri.container-type": "container", "flexai.io/fraction": "0.5"}
    got = cdi_annotations.named(annotations)
    assert [n.qualified for n in got] == ["nvidia.com/gpu=0", CLAIM, "nvidia.com/gpu=1"]
    assert got[0].annotation == "cdi.k8s.io/a_dup" and got[1].kind == "flexai.io/gpu"
    assert cdi_annotations.named({"other": "x"}) == () and not cdi_annotations.has_devices({"other": "x"})
    assert cdi_annotations.has_devices({"cdi.k8s.io/x": "garbage"})


@pytest.mark.parametrize("value, bad", [("nvidia.com/gpu", "'nvidia.com/gpu'"), (f"{CLAIM},", "''"),
                                        (f"{CLAIM}, nvidia.com/gpu=0", "' nvidia.com/gpu=0'"), ("", "''")])
def test_a_malformed_annotation_is_one_line_naming_it(value, bad):
    with pytest.raises(cdi.CdiError) as info:
        cdi_annotations.named({"cdi.k8s.io/plugin_dev": value})
    message = str(info.value)
    assert message.startswith(f"annotation cdi.k8s.io/plugin_dev: {bad} is not a fully-qualified CDI device name")
    assert "\n" not in message


def claim_spec(name="2f1d-uid-gpu-0", env="FLEXAI_SLICE_ID=s1"):
    return json.dumps({"cdiVersion": "0.5.0", "kind": "flexai.io/gpu",
                       "containerEdits": {"env": ["COMMON=1"]},
                       "devices": [{"name": name, "containerEdits": {
                           "env": [env],
                           "deviceNodes": [{"path": "/dev/flexai-card", "hostPath": "/dev/null"}],
                           "mounts": [{"hostPath": "/tmp", "containerPath": "/run/flexai/slice.conf",
                                       "type": "bind", "options": ["rbind", "ro"]}]}},
                                   {"name": "other", "containerEdits": {"env": ["OTHER=1"]}}]})


def test_named_devices_resolve_across_dirs_and_apply_as_cdi_does(tmp_path):
    early, late = tmp_path / "etc-cdi", tmp_path / "run-cdi"
    early.mkdir()
    late.mkdir()
    (early / "claim.json").write_text(claim_spec(env="FLEXAI_SLICE_ID=hidden"))
    (late / "claim.json").write_text(claim_spec())  # a later directory wins
    loaded = cdi_store.load([str(early), str(late)])
    named = cdi_annotations.named({"cdi.k8s.io/gpu.flexai.io_uid": f"{CLAIM},flexai.io/gpu=other"})
    resolved = cdi_annotations.resolve(loaded.specs, loaded.errors, named, loaded.dirs)
    assert [r.spec.path for r in resolved] == [str(late / "claim.json")] * 2
    edits = cdi_annotations.edits_of(resolved)
    assert edits.env == ("COMMON=1", "FLEXAI_SLICE_ID=s1", "OTHER=1")  # the spec's common edits once


def test_named_devices_spec_applies_them_and_leaves_others_alone(tmp_path):
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "flexai.io-gpu_uid.json").write_text(claim_spec())
    settings = {"cdi_spec_dirs": str(d)}
    base = minimal_spec(["sh"], env=["PATH=/bin"])
    assert prepare.named_devices_spec(base, settings) is None  # nothing named: nothing read
    base["annotations"] = {"cdi.k8s.io/gpu.flexai.io_uid": CLAIM, "keep": "me"}
    out = prepare.named_devices_spec(base, settings)
    assert out["process"]["env"] == base["process"]["env"] + ["COMMON=1", "FLEXAI_SLICE_ID=s1"]
    assert out["annotations"] == base["annotations"] and "hooks" not in out  # no release hook: not a slice of ours
    null = os.stat("/dev/null")
    (node,) = out["linux"]["devices"]
    assert (node["path"], node["major"], node["minor"]) == ("/dev/flexai-card", os.major(null.st_rdev),
                                                             os.minor(null.st_rdev))
    assert {"destination": "/run/flexai/slice.conf", "source": "/tmp", "type": "bind",
            "options": ["rbind", "ro"]} in out["mounts"]
    assert prepare.named_devices_spec(out, settings) == out  # applied again: nothing more


def test_a_device_in_no_spec_dir_is_one_line_naming_it_and_the_dirs(tmp_path):
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "claim.json").write_text(claim_spec())
    base = minimal_spec(["sh"], env=[])
    base["annotations"] = {"cdi.k8s.io/gpu.flexai.io_gone": "flexai.io/gpu=gone-gpu-0"}
    with pytest.raises(prepare.PrepareError) as info:
        prepare.named_devices_spec(base, {"cdi_spec_dirs": f"{d}:{tmp_path / 'missing'}"})
    assert str(info.value) == (f"unresolvable CDI device flexai.io/gpu=gone-gpu-0 (annotation "
                               f"cdi.k8s.io/gpu.flexai.io_gone): no spec in {d}, {tmp_path / 'missing'} has it")
    (d / "broken.json").write_text('{"cdiVersion": "0.5.0", "kind": "flexai.io/gpu", "devices": []}')
    with pytest.raises(prepare.PrepareError) as info:
        prepare.named_devices_spec(base, {"cdi_spec_dirs": str(d)})
    assert f"a spec that may have it is broken: {d / 'broken.json'}: devices" in str(info.value)
    base["annotations"] = {"cdi.k8s.io/x": "not-a-device"}
    with pytest.raises(prepare.PrepareError, match="^annotation cdi.k8s.io/x: 'not-a-device' is not"):
        prepare.named_devices_spec(base, {"cdi_spec_dirs": str(d)})


def test_a_sliced_container_gets_its_named_devices_under_the_slice(tmp_path, slice_dir):
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "claim.json").write_text(claim_spec(env="FLEXAI_SLICE_FILE=/from-annotation"))
    res = reservation(backend="simulated", uuid=SIM_UUID, paths=("/dev/null",), slice_dir=str(slice_dir))
    base = minimal_spec(["sh"], env=["FLEXAI_FRACTION=0.25"])
    base["annotations"] = {"cdi.k8s.io/gpu.flexai.io_uid": CLAIM}
    spec = prepare.prepare_container(base, res, "/bin/flexai-hook", None, {"cdi_spec_dirs": str(d)}).spec
    env = spec["process"]["env"]
    assert "COMMON=1" in env and "FLEXAI_SLICE_FILE=/run/flexai/slice.conf" in env  # the slice wins
    assert "FLEXAI_SLICE_FILE=/from-annotation" not in env
