"""Podman end to end, with its own storage and a containers.conf that `flexai install podman`
edited: `--runtime flexai` (the spec is edited) and `--annotation flexai.io/...` with plain runc
(the hooks.d path: flexai-hook reserves and mounts the slice itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import cdi_support as cs
import engines_support as es
from conftest import GIB, tool
from libflexai_support import client, libs  # noqa: F401
from flexai_hook.engines import podman as podman_engine

VIEW = ("busybox awk '{print $5, $6}' /proc/self/mountinfo | sort; ls -la /dev /run | busybox awk '{print $1, $NF}'; "
        "env | grep -v ^HOSTNAME= | sort; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; id")


def flexai(*args):
    return subprocess.run([tool("flexai"), *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    es.need("podman", "podman")
    root = tmp_path_factory.mktemp("podman")
    daemon = es.start_flexaid(root / "flexaid")
    podman = None
    try:
        wrapper = es.runtime_wrapper(root, es.runtime_config(root, daemon))
        podman = es.Podman(root / "podman").setup()
        out = flexai("install", "podman", "--config", podman.conf, "--hooks-dir", podman.hooks_dir,
                     "--runtime-path", wrapper, "--hook-path", tool("flexai-hook"), "--socket", daemon.socket)
        assert out.returncode == 0, out.stderr
        rootfs = es.make_rootfs(root / "rootfs")
        loaded = podman.podman("load", "-i", es.image_archive(rootfs, root / "image.tar"))
        if loaded.returncode != 0:
            pytest.skip(f"podman cannot load an image here: {loaded.stderr.strip()[-500:]}")
        yield podman, daemon
    finally:
        if podman is not None:
            podman.teardown()
        es.stop_flexaid(daemon)


def prun(podman, *args):
    return podman.podman("run", "--rm", "--network", "none", *args[:-1], es.IMAGE, "sh", "-c", args[-1])


@pytest.mark.parametrize("how", [
    ("--runtime", "flexai", "-e", "FLEXAI_FRACTION=0.3"),
    ("--runtime", "runc", "--annotation", "flexai.io/fraction=0.3"),  # hooks.d
    ("--runtime", "flexai", "--annotation", "flexai.io/fraction=0.3"),  # both: sliced once
], ids=["runtime-env", "hook-annotation", "runtime-and-hook"])
def test_sliced_container_sees_its_slice_and_gives_it_back(engine, how):
    podman, daemon = engine
    device = daemon.cards[0]["device"]
    before = daemon.log().count("reserved slice")
    out = prun(podman, *how, f"test -c {device} && cat /run/flexai/slice.conf && grep -c ' /run/flexai/slice.conf ' /proc/self/mountinfo")
    assert out.returncode == 0, out.stderr
    assert f"memory_limit={16 * GIB * 30 // 100}" in out.stdout and "compute_limit=30" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "1"  # one slice file mount, not two
    assert daemon.log().count("reserved slice") == before + 1
    assert daemon.slices() == []


def test_hook_path_exec_sees_the_slice_and_release_follows_rm(engine):
    podman, daemon = engine
    started = podman.podman("run", "-d", "--network", "none", "--runtime", "runc", "--annotation",
                            "flexai.io/memory=2GiB", es.IMAGE, "sleep", "120")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        (slice_,) = daemon.slices()
        assert slice_["container_id"] == cid and slice_["memory_bytes"] == 2 * GIB
        out = podman.podman("exec", cid, "sh", "-c", f"test -c {daemon.cards[0]['device']} && cat /run/flexai/slice.conf")
        assert out.returncode == 0 and f"memory_limit={2 * GIB}" in out.stdout, out.stderr
        assert podman.podman("exec", cid, "sh", "-c", "echo x >> /run/flexai/slice.conf").returncode != 0
    finally:
        podman.podman("rm", "-f", "-t", "0", cid)
    assert daemon.slices() == []


def test_container_without_request_is_the_same_as_with_plain_runc(engine):
    podman, daemon = engine
    before = daemon.log().count("reserved slice")
    plain = prun(podman, "--runtime", "runc", "--hostname", "same", VIEW)
    through = prun(podman, "--runtime", "flexai", "--hostname", "same", VIEW)
    assert plain.returncode == 0 and through.returncode == 0, (plain.stderr, through.stderr)
    assert through.stdout == plain.stdout
    assert daemon.log().count("reserved slice") == before


@pytest.mark.parametrize("runtime, flag, value, reason", [
    ("flexai", "-e", "FLEXAI_FRACTION=abc", "flexai: invalid FLEXAI_FRACTION='abc'"),
    ("flexai", "-e", "FLEXAI_FRACTION=1.5", "flexai: invalid FLEXAI_FRACTION='1.5'"),
    ("flexai", "--annotation", "flexai.io/fraction=0", "flexai: invalid annotation flexai.io/fraction='0'"),
    ("runc", "--annotation", "flexai.io/fraction=abc", "flexai: invalid annotation flexai.io/fraction='abc'"),
    ("runc", "--annotation", "flexai.io/fraction=1.5", "flexai: invalid annotation flexai.io/fraction='1.5'"),
    ("runc", "--annotation", "flexai.io/priority=urgent", "flexai: invalid annotation flexai.io/priority='urgent'"),
    ("runc", "--annotation", "flexai.io/memory=17GiB", "can never fit on this host"),
])
def test_bad_request_fails_podman_run_with_flexais_reason(engine, runtime, flag, value, reason):
    podman, daemon = engine
    out = podman.podman("run", "--rm", "--network", "none", "--runtime", runtime, flag, value, es.IMAGE, "echo", "STARTED")
    assert out.returncode == 126, out
    assert "STARTED" not in out.stdout
    (line,) = [line for line in out.stderr.splitlines() if reason in line]
    assert line.startswith("Error: OCI runtime error:")
    assert daemon.slices() == []
    assert podman.podman("ps", "-aq").stdout.strip() == ""


def test_install_uninstall_round_trip_keeps_the_file(engine, tmp_path):
    podman, _ = engine
    conf = tmp_path / "containers.conf"
    original = es.BASE_CONTAINERS_CONF.format(hooks=tmp_path / "hooks.d", root=tmp_path, runc="/usr/sbin/runc")
    conf.write_text(original)
    hooks = tmp_path / "hooks.d"
    args = ["--config", conf, "--hooks-dir", hooks]
    out = flexai("install", "podman", *args, "--default", "--runtime-path", tool("flexai-runtime"))
    assert out.returncode == 0, out.stderr
    text = conf.read_text()
    assert f'flexai = ["{tool("flexai-runtime")}"]' in text and 'runtime = "flexai"' in text
    assert "# the plain runtime" in text and sorted(p.name for p in hooks.iterdir()) == ["flexai-release.json", "flexai.json"]
    # podman itself reads the edited file
    info = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True, text=True,
                          timeout=60, env={**podman.env(), "CONTAINERS_CONF": str(conf)})
    assert info.returncode == 0 and info.stdout.strip() == "flexai", info.stderr
    assert "already installed" in flexai("install", "podman", *args, "--default", "--runtime-path",
                                         tool("flexai-runtime")).stdout
    out = flexai("uninstall", "podman", *args)
    assert out.returncode == 0, out.stderr
    assert conf.read_text() == original and list(hooks.iterdir()) == []


def test_install_without_hooks_dir_slices_where_podman_reads_hooks(engine, tmp_path):
    """Issue 17: no containers.conf sets hooks_dir, so Podman 4.3 reads only its built-in
    /usr/share/containers/oci/hooks.d, not /etc/containers/oci/hooks.d. `flexai install podman`
    into a private root; Podman runs in a private mount namespace where that root's
    /etc/containers and /usr/share/containers stand in for the host's (which stay untouched)."""
    _, daemon = engine
    es.need("unshare", "util-linux")
    root = tmp_path / "root"
    for host in (Path("/etc/containers"), Path("/usr/share/containers")):
        if not host.is_dir():
            pytest.skip(f"{host} is missing: nothing to stand in for")
        shutil.copytree(host, root / str(host).lstrip("/"), symlinks=True)
    conf = root / "etc/containers/containers.conf"
    conf.write_text("".join(line for line in es.BASE_CONTAINERS_CONF.splitlines(True) if "hooks_dir" not in line)
                    .format(root=tmp_path, runc=es.need("runc", "runc")))
    assert "hooks_dir = " not in (root / "usr/share/containers/containers.conf").read_text().replace("#hooks_dir", "")
    storage = tmp_path / "storage.conf"
    storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path}/graph"\nrunroot = "{tmp_path}/run"\n')
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
    env["CONTAINERS_STORAGE_CONF"] = str(storage)
    script = ('mount --bind "$1/etc/containers" /etc/containers && '
              'mount --bind "$1/usr/share/containers" /usr/share/containers && shift && exec podman "$@"')

    def in_ns(*args):
        return es.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", root, *args],
                      timeout=180, env=env)

    device = daemon.cards[0]["device"]
    probe = ("run", "--rm", "--network", "none", "--runtime", "runc", "--annotation", "flexai.io/fraction=0.3",
             es.IMAGE, "sh", "-c", f"cat /run/flexai/slice.conf 2>/dev/null; test -c {device} && echo DEVICE; echo RAN")
    try:
        loaded = in_ns("load", "-i", es.image_archive(es.make_rootfs(tmp_path / "rootfs"), tmp_path / "image.tar"))
        if loaded.returncode != 0:
            pytest.skip(f"podman cannot load an image here: {loaded.stderr.strip()[-500:]}")
        # where flexai used to write its hooks: Podman does not run them (the container runs unsliced)
        legacy = root / "etc/containers/oci/hooks.d"
        legacy.mkdir(parents=True)
        for name, text in podman_engine.hook_texts(tool("flexai-hook"), {"FLEXAI_SOCKET": daemon.socket}).items():
            (legacy / name).write_text(text)
        before = daemon.log().count("reserved slice")
        out = in_ns(*probe)
        assert out.returncode == 0 and "RAN" in out.stdout, out.stderr
        assert "memory_limit" not in out.stdout and daemon.log().count("reserved slice") == before
        # flexai install finds Podman's folder itself
        installed = subprocess.run([tool("flexai"), "install", "podman", "--root", root, "--hook-path",
                                    tool("flexai-hook"), "--runtime-path", tool("flexai-runtime"), "--socket",
                                    daemon.socket], capture_output=True, text=True, timeout=60, env=env)
        assert installed.returncode == 0, installed.stderr
        assert f"created {root}/usr/share/containers/oci/hooks.d/flexai.json" in installed.stdout
        assert not (legacy / "flexai.json").exists()
        out = in_ns(*probe)
        assert out.returncode == 0, out.stderr
        assert f"memory_limit={16 * GIB * 30 // 100}" in out.stdout and "DEVICE" in out.stdout, out.stdout
        assert daemon.log().count("reserved slice") == before + 1
        assert daemon.slices() == []
        uninstalled = subprocess.run([tool("flexai"), "uninstall", "podman", "--root", root], capture_output=True,
                                     text=True, timeout=60, env=env)
        assert uninstalled.returncode == 0, uninstalled.stderr
        assert list((root / "usr/share/containers/oci/hooks.d").iterdir()) == []
        out = in_ns(*probe)
        assert out.returncode == 0 and "memory_limit" not in out.stdout, out.stderr
    finally:
        in_ns("rm", "-af", "-t", "0")
        in_ns("rmi", "-af")
        es.unmount_under(tmp_path)
    assert not Path("/usr/share/containers/oci/hooks.d/flexai.json").exists()
    assert not Path("/etc/containers/oci/hooks.d/flexai.json").exists()


def test_the_driver_comes_from_the_cdi_spec_alone(engine, client, tmp_path):  # noqa: F811
    """podman run --runtime flexai with the simulated cards' CDI spec in the format nvidia-ctk
    writes: mounts, device nodes and a createContainer hook reach the container through flexai."""
    podman, daemon = engine
    if not cs.host_has_glibc_layout():
        pytest.skip("the client image borrows the host's x86_64 Debian-style glibc")
    from flexai_hook.oci.image import image_archive

    rootfs = cs.client_rootfs(tmp_path / "rootfs", client)
    loaded = podman.podman("load", "-i", image_archive(rootfs, tmp_path / "client.tar", cs.CLIENT_IMAGE))
    assert loaded.returncode == 0, loaded.stderr
    host, inside = cs.glibc_mount()

    def run_client(args):
        return podman.podman("run", "--rm", "--network", "none", "--runtime", "flexai", "-e", "FLEXAI_FRACTION=0.25",
                             "-v", f"{host}:{inside}:ro", cs.CLIENT_IMAGE, "/bin/flexai_client", *args)

    cs.check_engine(run_client, podman.root.parent / "runtime.json", daemon, tmp_path)
