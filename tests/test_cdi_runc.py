"""CDI through flexai-runtime and real runc, on both start paths (the C front door, which has
flexaid prepare the spec, and the Python implementation): the driver comes from the CDI spec
alone (simulator mounts switched off), the slice still holds, both paths edit the spec alike,
and without a spec the runtime says what to run or chains to the configured vendor runtime."""

from __future__ import annotations

import json
import re

import pytest

import cdi_support as cs
from conftest import GIB, tool
from libflexai_support import client, info, libs  # noqa: F401
from test_runtime_runc import run_to_files

pytestmark = pytest.mark.skipif(not cs.host_has_glibc_layout(),
                                reason="the client container borrows the host's x86_64 Debian-style glibc")


@pytest.fixture
def setup(tmp_path, make_daemon, runc, libs):  # noqa: F811
    daemon = make_daemon(memories=("16GiB",))
    hook = cs.write_link_hook(tmp_path / "nvidia-cdi-hook")
    with_spec = tmp_path / "cdi"
    cs.write_spec(with_spec, daemon.cards, hook)
    (tmp_path / "empty-cdi").mkdir()
    return daemon, runc, with_spec, tmp_path / "empty-cdi"


def config(tmp_path, daemon, runc, name="runtime.json", **extra):
    path = tmp_path / name
    path.write_text(json.dumps({"socket": daemon.socket, "runtime": runc.binary, **extra}))
    return path


def start(runc, path, *args, program="flexai-runtime", timeout=120):
    """flexai-runtime (C front door) or flexai-runtime-py with the runtime config at `path` only."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FLEXAI_RUNTIME_CONFIG": str(path)}
    return run_to_files([tool(program), "--root", str(runc.root), *args], env=env, timeout=timeout)


def client_bundle(make_bundle, client, args, env):  # noqa: F811
    from flexai_hook.oci import bundle as bundle_mod

    path = make_bundle(["/bin/flexai_client", *args], env=env)
    assert bundle_mod.add_host_programs(path, [client])
    return path


@pytest.mark.parametrize("program", ["flexai-runtime", "flexai-runtime-py"])
def test_the_driver_comes_from_the_cdi_spec_alone_and_the_slice_holds(setup, make_bundle, client, program):  # noqa: F811
    daemon, runc, with_spec, empty = setup
    tmp = with_spec.parent
    args = ["info", "alloc", "mem", str(5 * GIB), "alloc", "mem", str(GIB)]
    with_cdi = config(tmp, daemon, runc, cdi_spec_dirs=str(with_spec), sim_driver_mounts="off")
    bundle = client_bundle(make_bundle, client, args, ["FLEXAI_FRACTION=0.25"])
    out = start(runc, with_cdi, "run", "--bundle", str(bundle), "cdi1", program=program)
    assert out.returncode == 0, out.stdout + out.stderr + daemon.log()[-2000:]
    lines = out.stdout.strip().splitlines()
    seen = info(lines[0])
    # the simulated card through the CDI mounts, seen through the slice: 4 GiB of 16
    assert seen["count"] == 1 and seen["total"] == 4 * GIB and seen["uuid"] == daemon.cards[0]["uuid"]
    assert lines[1] == "oom" and lines[2].startswith("ok ")  # 5 GiB refused, 1 GiB granted
    assert "flexai:" not in out.stderr  # nothing to say: the driver is there
    spec = json.loads((bundle / "config.json").read_text())
    dests = {m["destination"]: m["source"] for m in spec["mounts"]}
    assert dests[f"{cs.LIB_DIR}/libcuda.so.{cs.DRIVER_VERSION}"] == cs.sim_libraries()["libcuda.so.1"]
    assert f"{cs.LIB_DIR}/libcuda.so.1" not in dests  # no simulator mount: only CDI's
    assert spec["hooks"]["createContainer"][0]["args"][:2] == ["nvidia-cdi-hook", "create-symlinks"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in spec["process"]["env"]
    assert daemon.slices() == []

    # the same container without the spec: no driver at all, and one line saying what to run
    without = config(tmp, daemon, runc, "runtime-empty.json", cdi_spec_dirs=str(empty), sim_driver_mounts="off")
    bundle = client_bundle(make_bundle, client, ["info"], ["FLEXAI_FRACTION=0.25"])
    out = start(runc, without, "run", "--bundle", str(bundle), "cdi2", program=program)
    assert out.returncode == 3 and out.stdout.strip() == "nodriver", out.stdout + out.stderr
    (said,) = [line for line in out.stderr.splitlines() if line.startswith("flexai:")]
    assert said.startswith(f"flexai: no CDI spec for nvidia.com/gpu in {empty}: ")
    assert "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in said
    assert daemon.slices() == []  # released after the failed run


def _normalized(text: str, daemon, cid: str) -> str:
    from flexai_hook.devices.board import slice_key, slot_name

    (slice_,) = [s for s in daemon.slices() if s["container_id"] == cid]
    sid = slice_["slice_id"]
    return text.replace(slot_name(slice_key(sid)), "SLOT").replace(sid, "SLICE").replace(cid, "CID")


def test_both_start_paths_edit_the_spec_alike(setup, make_bundle, tmp_path):
    """The C front door (flexaid prepares) and the Python runtime go through one function:
    the same config.json comes out, CDI edits and all. The front door runs from a folder
    without the Python implementation beside it, so it cannot quietly hand over to it."""
    import shutil

    from flexai_hook.install import cbuild

    daemon, runc, with_spec, _ = setup
    alone = tmp_path / "c-only"
    alone.mkdir()
    for name in ("flexai-runtime", "flexai-hook"):
        shutil.copy2(cbuild.package_lib_dir() / "bin" / name, alone / name)
    path = config(tmp_path, daemon, runc, cdi_spec_dirs=str(with_spec), sim_driver_mounts="off")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FLEXAI_RUNTIME_CONFIG": str(path)}
    texts = {}
    for program, cid in ((str(alone / "flexai-runtime"), "path-c"), (tool("flexai-runtime-py"), "path-py")):
        bundle = make_bundle(["true"], env=["FLEXAI_FRACTION=0.5"])
        # created, not started: the runc fixture deletes them
        out = run_to_files([program, "--root", str(runc.root), "create", "--bundle", str(bundle), cid], env=env,
                           timeout=60)
        assert out.returncode == 0, out.stderr
        text = (bundle / "config.json").read_text().replace(str(bundle), "BUNDLE")
        text = text.replace(str(alone / "flexai-hook"), "HOOK").replace(tool("flexai-hook"), "HOOK")
        texts[cid] = _normalized(text, daemon, cid)
    assert f"libcuda.so.{cs.DRIVER_VERSION}" in texts["path-c"]
    assert json.loads(texts["path-c"]) == json.loads(texts["path-py"])


def test_a_broken_spec_stops_the_container_with_one_line_naming_it(setup, make_bundle, tmp_path):
    daemon, runc, with_spec, _ = setup
    spec = with_spec / "nvidia.yaml"
    spec.write_text(spec.read_text().replace("hookName: createContainer", "hookName: beforeStart"))
    path = config(tmp_path, daemon, runc, cdi_spec_dirs=str(with_spec), sim_driver_mounts="off")
    bundle = make_bundle(["true"], env=["FLEXAI_FRACTION=0.5"])
    before = (bundle / "config.json").read_text()
    out = start(runc, path, "run", "--bundle", str(bundle), "broken1")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert re.match(rf"flexai: could not prepare broken1 for its slice: {spec}: containerEdits.hooks\[0\].hookName: "
                    r"'beforeStart' is not one of", line), line
    assert (bundle / "config.json").read_text() == before and daemon.slices() == []


@pytest.mark.parametrize("program", ["flexai-runtime", "flexai-runtime-py"])
def test_without_a_spec_the_configured_vendor_runtime_runs_with_the_card(setup, make_bundle, tmp_path, program):
    """chain_without_cdi: a stand-in for nvidia-container-runtime (it notes that it ran, then
    runs runc) gets the container, whose NVIDIA_VISIBLE_DEVICES names exactly the reserved card."""
    daemon, runc, _, empty = setup
    ran = tmp_path / "vendor-ran"
    vendor = tmp_path / "nvidia-container-runtime"
    vendor.write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\nexec {runc.binary} \"$@\"\n")
    vendor.chmod(0o755)
    path = config(tmp_path, daemon, runc, cdi_spec_dirs=str(empty), sim_driver_mounts="off",
                  chain_without_cdi=str(vendor))
    bundle = make_bundle(["sh", "-c", "env | grep ^NVIDIA_"], env=["FLEXAI_FRACTION=0.5", "NVIDIA_VISIBLE_DEVICES=all"])
    out = start(runc, path, "run", "--bundle", str(bundle), "chain1", program=program)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"NVIDIA_VISIBLE_DEVICES={daemon.cards[0]['uuid']}"
    assert " run " in f" {ran.read_text()} " and "flexai:" not in out.stderr
    missing = config(tmp_path, daemon, runc, "missing.json", cdi_spec_dirs=str(empty), sim_driver_mounts="off",
                     chain_without_cdi=str(tmp_path / "not-installed"))
    out = start(runc, missing, "run", "--bundle", str(make_bundle(["true"], env=["FLEXAI_FRACTION=0.5"])), "chain2",
                program=program)
    (line,) = out.stderr.splitlines()
    assert out.returncode == 1 and "chain_without_cdi names" in line and "not-installed" in line, out.stderr
    assert daemon.slices() == []


# --- a DRA claim's CDI spec named in a cdi.k8s.io/ annotation (no FLEXAI_* request) ----------

def claim_cdi(daemon, cdi_dir, uid="5b0c9d4e-claim"):
    """A claim prepared as the DRA agent prepares it (flexai_hook/dra/driver.py): its slice
    reserved in flexaid under the claim's reservation id, its CDI spec written by dra/cdi.py.
    Returns (the device id the kubelet names, the annotation the kubelet's DRA manager writes)."""
    from flexai_hook.dra import cdi as dra_cdi
    from flexai_hook.oci.prepare import device_node
    from flexai_hook.request import from_container
    from flexai_hook.reservation import Reservation

    request = from_container(["FLEXAI_MEMORY=4GiB", "FLEXAI_COMPUTE=25"], {})
    reply = daemon.call({"op": "reserve", "container_id": f"dra-{uid}-gpu-0", "request": request.to_json()})
    held = Reservation.from_json(reply["reservation"])
    inj = dra_cdi.injection(held, tuple(device_node(p) for p in held.device_paths))
    cdi_dir.mkdir(exist_ok=True)
    (cdi_dir / dra_cdi.file_name(uid)).write_text(json.dumps(dra_cdi.spec_for(uid, [("gpu-0", inj)]), indent=1))
    return dra_cdi.device_id(uid, "gpu-0"), {f"cdi.k8s.io/gpu.flexai.io_{uid}": dra_cdi.device_id(uid, "gpu-0")}


def annotate(bundle, annotations):
    path = bundle / "config.json"
    spec = json.loads(path.read_text())
    spec.setdefault("annotations", {}).update(annotations)
    path.write_text(json.dumps(spec, indent=2))


def c_only(tmp_path):
    """flexai-runtime's C front door in a folder without the Python implementation beside it:
    a hand-over to Python shows as a failure to start flexai-runtime-py."""
    import shutil

    from flexai_hook.install import cbuild

    alone = tmp_path / "c-only"
    alone.mkdir(exist_ok=True)
    for name in ("flexai-runtime", "flexai-hook"):
        shutil.copy2(cbuild.package_lib_dir() / "bin" / name, alone / name)
    return str(alone / "flexai-runtime")


@pytest.mark.parametrize("program", ["flexai-runtime", "flexai-runtime-py"])
def test_a_claims_cdi_spec_named_in_an_annotation_gives_the_container_its_slice(setup, make_bundle, client,  # noqa: F811
                                                                                 tmp_path, program):
    daemon, runc, _, _ = setup
    tmp = tmp_path
    claims = tmp / "dra-cdi"
    device, annotations = claim_cdi(daemon, claims)
    path = config(tmp, daemon, runc, "runtime-dra.json", cdi_spec_dirs=str(claims))
    bundle = client_bundle(make_bundle, client, ["info", "alloc", "mem", str(5 * GIB), "alloc", "mem", str(GIB)], [])
    annotate(bundle, annotations)
    out = start(runc, path, "run", "--bundle", str(bundle), "claim1", program=program)
    assert out.returncode == 0, out.stdout + out.stderr + daemon.log()[-2000:]
    lines = out.stdout.strip().splitlines()
    seen = info(lines[0])
    assert seen["count"] == 1 and seen["total"] == 4 * GIB and seen["uuid"] == daemon.cards[0]["uuid"]
    assert lines[1] == "oom" and lines[2].startswith("ok ")  # past the slice refused, within it granted
    assert "flexai:" not in out.stderr
    spec = json.loads((bundle / "config.json").read_text())
    assert "poststop" not in spec.get("hooks", {})  # the claim is released by the agent, not by a container
    (held,) = daemon.slices()  # the claim's, still held after its container ended; no slice of its own
    assert held["container_id"].startswith("dra-") and f"FLEXAI_SLICE_ID={held['slice_id']}" in spec["process"]["env"]


def test_both_start_paths_apply_a_claims_annotation_alike_and_the_c_path_needs_no_python(setup, make_bundle,
                                                                                         tmp_path):
    daemon, runc, _, _ = setup
    claims = tmp_path / "dra-cdi"
    _, annotations = claim_cdi(daemon, claims)
    path = config(tmp_path, daemon, runc, cdi_spec_dirs=str(claims))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FLEXAI_RUNTIME_CONFIG": str(path)}
    specs = {}
    for program, cid in ((c_only(tmp_path), "ann-c"), (tool("flexai-runtime-py"), "ann-py")):
        bundle = make_bundle(["true"])
        annotate(bundle, annotations)
        # created, not started: the runc fixture deletes them
        out = run_to_files([program, "--root", str(runc.root), "create", "--bundle", str(bundle), cid], env=env,
                           timeout=60)
        assert out.returncode == 0, out.stderr
        specs[cid] = json.loads((bundle / "config.json").read_text().replace(str(bundle), "BUNDLE"))
    assert specs["ann-c"] == specs["ann-py"]
    assert any(m["destination"] == "/etc/ld.so.preload" for m in specs["ann-c"]["mounts"])
    assert [s["container_id"][:4] for s in daemon.slices()] == ["dra-"]  # neither reserved a slice


@pytest.mark.parametrize("program", ["flexai-runtime", "flexai-runtime-py"])
def test_a_device_in_no_spec_dir_stops_the_container_with_one_line(setup, make_bundle, tmp_path, program):
    daemon, runc, _, _ = setup
    claims = tmp_path / "dra-cdi"
    claim_cdi(daemon, claims)
    path = config(tmp_path, daemon, runc, cdi_spec_dirs=str(claims))
    bundle = make_bundle(["true"])
    annotate(bundle, {"cdi.k8s.io/gpu.flexai.io_gone": "flexai.io/gpu=gone-gpu-0"})
    before = (bundle / "config.json").read_text()
    out = start(runc, path, "run", "--bundle", str(bundle), "gone1", program=program)
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line == ("flexai: could not apply the CDI devices named in gone1's annotations: unresolvable CDI device "
                    f"flexai.io/gpu=gone-gpu-0 (annotation cdi.k8s.io/gpu.flexai.io_gone): no spec in {claims} has it")
    assert (bundle / "config.json").read_text() == before and runc.list_ids() == []


def test_a_config_without_cdi_annotations_passes_through_the_c_front_door_untouched(setup, make_bundle, tmp_path):
    daemon, runc, _, _ = setup
    path = config(tmp_path, daemon, runc, cdi_spec_dirs=str(tmp_path / "dra-cdi"))
    bundle = make_bundle(["true"], annotations={"io.kubernetes.cri.container-type": "container"})
    before = (bundle / "config.json").read_bytes()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FLEXAI_RUNTIME_CONFIG": str(path)}
    out = run_to_files([c_only(tmp_path), "--root", str(runc.root), "run", "--bundle", str(bundle), "plain1"], env=env,
                       timeout=60)
    # no flexai-runtime-py beside it: had the front door handed over, this would fail
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert (bundle / "config.json").read_bytes() == before and daemon.slices() == []
