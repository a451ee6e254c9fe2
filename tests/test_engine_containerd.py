"""containerd end to end: a real containerd (own root, state and socket); `ctr run --runc-binary
flexai-runtime --annotation flexai.io/...` (the annotation path Kubernetes uses), and the
config `flexai install containerd` writes, read back by containerd itself."""

from __future__ import annotations

import subprocess
import time

import pytest

import cdi_support as cs
import engines_support as es
from conftest import GIB, tool
from libflexai_support import client, libs  # noqa: F401

VIEW = ("busybox awk '{print $5, $6}' /proc/self/mountinfo | sort; ls -la /dev /run | busybox awk '{print $1, $NF}'; "
        "env | sort; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; id")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    es.need("containerd", "containerd")
    root = tmp_path_factory.mktemp("containerd")
    daemon = es.start_flexaid(root / "flexaid")
    containerd = None
    try:
        config = es.runtime_config(root, daemon)
        containerd = es.Containerd(root / "ctd", env={"FLEXAI_RUNTIME_CONFIG": str(config)}).start()
        rootfs = es.make_rootfs(root / "rootfs")
        imported = containerd.ctr("images", "import", es.image_archive(rootfs, root / "image.tar"))
        assert imported.returncode == 0, imported.stderr
        yield containerd, daemon
    finally:
        if containerd is not None:
            for cid in containerd.ctr("containers", "list", "-q").stdout.split():
                containerd.ctr("tasks", "kill", "-s", "KILL", cid)
                containerd.ctr("containers", "delete", cid)
            containerd.stop()
        es.stop_flexaid(daemon)


def ctr_run(containerd, name, *args, runtime=True):
    binary = ["--runc-binary", tool("flexai-runtime")] if runtime else []
    return containerd.ctr("run", "--rm", *binary, *args[:-1], es.IMAGE_REF, name, "sh", "-c", args[-1])


def test_annotation_gives_the_container_its_slice(engine):
    containerd, daemon = engine
    device = daemon.cards[0]["device"]
    out = ctr_run(containerd, "sliced1", "--annotation", "flexai.io/fraction=0.3",
                  f"test -c {device} && cat /run/flexai/slice.conf && env | grep ^FLEXAI_")
    assert out.returncode == 0, out.stderr
    assert f"memory_limit={16 * GIB * 30 // 100}" in out.stdout and "compute_limit=30" in out.stdout
    assert f"FLEXAI_DEVICE_UUID={daemon.cards[0]['uuid']}" in out.stdout
    assert daemon.slices() == []


def test_env_request_and_annotation_override(engine):
    containerd, daemon = engine
    out = ctr_run(containerd, "sliced2", "--env", "FLEXAI_FRACTION=0.5", "--annotation", "flexai.io/compute=20",
                  "cat /run/flexai/slice.conf")
    assert out.returncode == 0, out.stderr
    assert f"memory_limit={16 * GIB // 2}" in out.stdout and "compute_limit=20" in out.stdout
    assert daemon.slices() == []


def test_reservation_lives_as_long_as_the_task(engine):
    containerd, daemon = engine
    started = containerd.ctr("run", "-d", "--runc-binary", tool("flexai-runtime"), "--annotation",
                             "flexai.io/memory=4GiB", es.IMAGE_REF, "long1", "sleep", "120")
    assert started.returncode == 0, started.stderr
    try:
        (slice_,) = daemon.slices()
        assert slice_["container_id"] == "long1" and slice_["memory_bytes"] == 4 * GIB
        out = containerd.ctr("tasks", "exec", "--exec-id", "e1", "long1", "cat", "/run/flexai/slice.conf")
        assert out.returncode == 0 and f"memory_limit={4 * GIB}" in out.stdout, out.stderr
    finally:
        containerd.ctr("tasks", "kill", "-s", "KILL", "long1")
        deadline = time.monotonic() + 20
        while containerd.ctr("tasks", "delete", "long1").returncode != 0 and time.monotonic() < deadline:
            if "long1" not in containerd.ctr("tasks", "list", "-q").stdout:
                break
            time.sleep(0.1)
        containerd.ctr("containers", "delete", "long1")
    assert daemon.slices() == []


def test_container_without_request_is_the_same_as_with_plain_runc(engine):
    containerd, daemon = engine
    reserved_before = daemon.log().count("reserved slice")
    plain = ctr_run(containerd, "same", VIEW, runtime=False)
    through = ctr_run(containerd, "same", VIEW)
    assert plain.returncode == 0 and through.returncode == 0, (plain.stderr, through.stderr)
    assert through.stdout == plain.stdout
    assert daemon.log().count("reserved slice") == reserved_before


@pytest.mark.parametrize("flag, value, reason", [
    ("--annotation", "flexai.io/fraction=abc", "flexai: invalid annotation flexai.io/fraction='abc'"),
    ("--annotation", "flexai.io/fraction=1.5", "flexai: invalid annotation flexai.io/fraction='1.5'"),
    ("--annotation", "flexai.io/fraction=0", "flexai: invalid annotation flexai.io/fraction='0'"),
    ("--annotation", "flexai.io/priority=urgent", "flexai: invalid annotation flexai.io/priority='urgent'"),
    ("--env", "FLEXAI_FRACTION=abc", "flexai: invalid FLEXAI_FRACTION='abc'"),
])
def test_bad_request_fails_ctr_run_with_flexais_reason(engine, flag, value, reason):
    containerd, daemon = engine
    out = containerd.ctr("run", "--rm", "--runc-binary", tool("flexai-runtime"), flag, value, es.IMAGE_REF, "bad1",
                         "echo", "STARTED")
    assert out.returncode != 0 and "STARTED" not in out.stdout
    (line,) = [line for line in out.stderr.splitlines() if reason in line]
    assert line.startswith("ctr: failed to create shim task: OCI runtime create failed: flexai: invalid")
    assert daemon.slices() == []
    assert containerd.ctr("containers", "list", "-q").stdout.strip() == ""


MAIN_CONFIG = """\
# containerd config, kept by hand
version = 2
imports = ["{site}"]  # site settings
root = "{root}/var"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"  # pinned
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
      runtime_type = "io.containerd.kata.v2"
"""


def test_install_is_read_back_by_containerd_and_uninstall_restores_the_file(tmp_path):
    binary = es.need("containerd", "containerd")
    site = tmp_path / "site.toml"
    site.write_text('version = 2\n[plugins."io.containerd.internal.v1.opt"]\n  path = "/opt/site"\n')
    main = tmp_path / "config.toml"
    original = MAIN_CONFIG.format(site=site, root=tmp_path)
    main.write_text(original)
    dropin = tmp_path / "conf.d" / "flexai.toml"
    args = ["--config", main, "--dropin", dropin]

    dry = subprocess.run([tool("flexai"), "install", "containerd", *map(str, args), "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f'+imports = ["{site}", "{dropin}"]  # site settings' in dry.stdout
    assert main.read_text() == original and not dropin.exists()

    out = subprocess.run([tool("flexai"), "install", "containerd", *map(str, args), "--runtime-path",
                          "/usr/local/bin/flexai-runtime"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "systemctl restart containerd" in out.stdout
    assert "# containerd config, kept by hand" in main.read_text() and "# pinned" in main.read_text()

    dump = subprocess.run([binary, "--config", str(main), "config", "dump"], capture_output=True, text=True,
                          timeout=60)
    assert dump.returncode == 0, dump.stderr
    import tomllib

    effective = tomllib.loads(dump.stdout)
    cri = effective["plugins"]["io.containerd.grpc.v1.cri"]
    flexai = cri["containerd"]["runtimes"]["flexai"]
    assert flexai["runtime_type"] == "io.containerd.runc.v2"
    assert flexai["options"]["BinaryName"] == "/usr/local/bin/flexai-runtime"
    assert flexai["options"]["SystemdCgroup"] is True  # copied from runc
    assert flexai["pod_annotations"] == ["flexai.io/*"] and flexai["container_annotations"] == ["flexai.io/*"]
    # everything else the main config set survives containerd's section-replacing import
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni" and cri["sandbox_image"] == "registry.k8s.io/pause:3.9"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert "kata" in cri["containerd"]["runtimes"]
    assert cri["containerd"]["default_runtime_name"] == "runc"
    assert effective["plugins"]["io.containerd.internal.v1.opt"]["path"] == "/opt/site"

    again = subprocess.run([tool("flexai"), "install", "containerd", *map(str, args), "--runtime-path",
                            "/usr/local/bin/flexai-runtime"], capture_output=True, text=True, timeout=60)
    assert "already installed" in again.stdout

    out = subprocess.run([tool("flexai"), "uninstall", "containerd", *map(str, args)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert main.read_text() == original and not dropin.exists()
    assert sorted(p.name for p in tmp_path.glob("config.toml.flexai-backup-*"))  # the backups stay


def test_the_driver_comes_from_the_cdi_spec_alone(engine, client, tmp_path):  # noqa: F811
    """ctr run with flexai-runtime and the simulated cards' CDI spec in the format nvidia-ctk
    writes: mounts, device nodes and a createContainer hook reach the container through flexai."""
    containerd, daemon = engine
    if not cs.host_has_glibc_layout():
        pytest.skip("the client image borrows the host's x86_64 Debian-style glibc")
    from flexai_hook.oci.image import image_archive

    rootfs = cs.client_rootfs(tmp_path / "rootfs", client)
    imported = containerd.ctr("images", "import", image_archive(rootfs, tmp_path / "client.tar", cs.CLIENT_IMAGE))
    assert imported.returncode == 0, imported.stderr
    host, inside = cs.glibc_mount()
    runs = iter(range(100))

    def run_client(args):
        return containerd.ctr("run", "--rm", "--runc-binary", tool("flexai-runtime"), "--env", "FLEXAI_FRACTION=0.25",
                              "--mount", f"type=bind,src={host},dst={inside},options=rbind:ro",
                              cs.CLIENT_IMAGE_REF, f"cdi{next(runs)}", "/bin/flexai_client", *args)

    cs.check_engine(run_client, containerd.root.parent / "runtime.json", daemon, tmp_path)
