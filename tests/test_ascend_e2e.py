"""A simulated Ascend card end to end: flexaid places on it, flexai-runtime + runc start a
container with its davinci nodes and ASCEND_VISIBLE_DEVICES. Every process is stopped by pid
(the daemon and runc fixtures in conftest.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil

import pytest

from conftest import GIB
from test_runtime_runc import runtime


@pytest.fixture
def ascend_dev_dir():
    path = f"/dev/flexai-test-ascend-{secrets.token_hex(3)}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ascend_daemon(make_daemon, ascend_dev_dir):
    if os.geteuid() != 0:
        pytest.skip("simulated device nodes need root")
    cards = [{"name": "sim Ascend 910B", "memory": "64GiB", "kind": "ascend", "device": f"{ascend_dev_dir}/davinci{i}"}
             for i in (4, 5)]
    return make_daemon(simulated={"cards": cards})


def test_sliced_container_gets_davinci_nodes_and_visible_devices(runc, ascend_daemon, make_bundle, ascend_dev_dir):
    nodes = ["davinci5", "davinci_manager", "devmm_svm", "hisi_hdc"]
    script = " && ".join(f"test -c {ascend_dev_dir}/{n}" for n in nodes)
    script += f" && ! test -e {ascend_dev_dir}/davinci4 && echo VISIBLE=$ASCEND_VISIBLE_DEVICES && cat /run/flexai/slice.conf"
    bundle = make_bundle(["sh", "-c", script],
                         env=["FLEXAI_FRACTION=0.25", "FLEXAI_DEVICE=1", "ASCEND_VISIBLE_DEVICES=0-7"])
    out = runtime(runc, ascend_daemon, "run", "--bundle", str(bundle), "npu1")
    assert out.returncode == 0, out.stderr + ascend_daemon.log()
    assert "VISIBLE=5\n" in out.stdout  # the slice's chip only, whatever the image said
    assert f"memory_limit={64 * GIB // 4}" in out.stdout
    spec = json.loads((bundle / "config.json").read_text())
    paths = [d["path"] for d in spec["linux"]["devices"]]
    assert sorted(paths) == sorted(f"{ascend_dev_dir}/{n}" for n in nodes)  # each node once
    assert ascend_daemon.slices() == []  # released at poststop


def test_status_shows_the_ascend_cards(ascend_daemon):
    cards = ascend_daemon.status()["cards"]
    assert [c["name"] for c in cards] == ["sim Ascend 910B"] * 2
    assert all(c["uuid"].startswith("NPU-") for c in cards)


@pytest.fixture
def acl_clients(tmp_path_factory):
    """The ACL clients, built against the in-place simulated libascendcl.so."""
    from acl_support import build_clients
    from flexai_hook.install import cbuild

    out = cbuild.build(cbuild.package_lib_dir())
    lib = next((p for p in out if p.name == "libascendcl.so"), None)
    if lib is None or not any(p.name == "libflexai.so" for p in out):
        pytest.skip("libflexai.so or the simulated libascendcl.so was not built")
    return build_clients(lib, tmp_path_factory.mktemp("acl-e2e"))


def test_acl_client_in_a_sliced_container_is_limited(runc, ascend_daemon, make_bundle, acl_clients, tmp_path):
    """flexai-runtime + runc + flexaid on a simulated Ascend card: the container's ACL programs
    (linked against libascendcl.so, and dlopen()ing it) see one device with the slice's memory
    and are stopped at the limit with 207001, the budget shared by both processes."""
    from test_libflexai_e2e import dynamic_bundle

    if not os.path.exists("/lib64/ld-linux-x86-64.so.2"):
        pytest.skip("this test builds its rootfs from an x86_64 Debian-style host glibc")
    script = ("/bin/acl_link count init set 0 meminfo malloc 6442450944 fill 1073741824 errmsg set 1 && "
              "/bin/acl_dl count init set 0 meminfo malloc 17179869184")
    bundle = dynamic_bundle(make_bundle, str(acl_clients["dlopen"]), ["sh", "-c", script],
                            ["FLEXAI_FRACTION=0.25", "FLEXAI_DEVICE=1"])
    rootfs = bundle / "rootfs"
    shutil.copy2(acl_clients["link"], rootfs / "bin" / "acl_link")
    shutil.copy2(acl_clients["dlopen"], rootfs / "bin" / "acl_dl")
    out = runtime(runc, ascend_daemon, "run", "--bundle", str(bundle), "npu2", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr + ascend_daemon.log()
    lines = out.stdout.splitlines()
    assert lines.count("count rc=0 count=1") == 2  # linked and dlopen()ed: one device
    meminfos = [l for l in lines if l.startswith("meminfo")]
    assert len(meminfos) == 2 and all(f"total={16 * GIB}" in l for l in meminfos)  # a quarter of 64 GiB
    assert "malloc rc=0 bytes=6442450944" in lines
    # 16 GiB - the 300 MiB context - 6 GiB: nine more 1 GiB blocks, then 207001
    assert "fill rc=207001 filled=9663676416" in lines
    assert any(l.startswith("errmsg") and "flexai: out of memory in the slice" in l for l in lines)
    assert "set rc=107001 device=1" in lines
    assert "malloc rc=207001 bytes=17179869184" in lines
    assert ascend_daemon.slices() == []
