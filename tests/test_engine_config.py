"""The engine config edits as pure functions: idempotent, loss-free, refusing what they cannot
parse; and the files in runtime-config/ are exactly what install writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from conftest import tool
from flexai_hook.engines import ConfigError, apply, containerd, docker, podman, render_diff, tomltext
from flexai_hook.oci.hookinject import resolve_in_root

RT = "/usr/local/bin/flexai-runtime"
REPO = Path(__file__).resolve().parent.parent


# --- docker --------------------------------------------------------------------------------

DAEMON_JSON = """{
    "log-level": "warn",
    "runtimes": {
        "nvidia": {"path": "/usr/bin/nvidia-container-runtime", "runtimeArgs": []}
    },
    "storage-driver": "overlay2"
}
"""


def test_docker_install_keeps_other_settings_order_and_indent():
    new = docker.install_text(DAEMON_JSON, RT)
    data = json.loads(new)
    assert list(data) == ["log-level", "runtimes", "storage-driver"]
    assert data["runtimes"] == {"nvidia": {"path": "/usr/bin/nvidia-container-runtime", "runtimeArgs": []},
                                "flexai": {"path": RT}}
    assert '\n    "log-level"' in new  # the file's 4-space indent
    assert docker.install_text(new, RT) == new  # idempotent, byte for byte
    assert json.loads(docker.uninstall_text(new)) == json.loads(DAEMON_JSON)


def test_docker_default_and_uninstall():
    new = docker.install_text(None, RT, default=True)
    assert json.loads(new) == {"runtimes": {"flexai": {"path": RT}}, "default-runtime": "flexai"}
    # a reloaded dockerd only changes what the file sets: explicit values, not deleted keys
    assert json.loads(docker.uninstall_text(new)) == {"runtimes": {}, "default-runtime": "runc"}
    assert docker.uninstall_text(DAEMON_JSON) == DAEMON_JSON


NVIDIA_DEFAULT = """{
    "default-runtime": "nvidia",
    "runtimes": {
        "nvidia": {
            "args": [],
            "path": "nvidia-container-runtime"
        }
    }
}
"""


def _meaning(text):
    """daemon.json as dockerd reads it, key order included: an empty `runtimes` and a `runc`
    default are what dockerd has without them."""
    pairs = json.loads(text, object_pairs_hook=lambda kv: [list(p) for p in kv])
    return [p for p in pairs if p not in (["runtimes", []], ["default-runtime", "runc"])]


@pytest.mark.parametrize("original", [
    None,
    "{}\n",
    NVIDIA_DEFAULT,
    DAEMON_JSON,
    '{"default-runtime": "runc", "log-level": "warn"}\n',
    '{"runtimes": {"crun": {"path": "/usr/bin/crun"}}, "default-runtime": "crun", "debug": true}',
    '{\n\t"runtimes":{"a":{"path":"/bin/a"}} ,\n\t"x" : [1,2,{"y":null}], "default-runtime":"a"}',
    '{"features": {"buildkit": true}, "runtimes": {}, "data-root": "/srv/d\u00f6cker"}\n',
])
@pytest.mark.parametrize("default", [True, False])
def test_docker_install_uninstall_round_trip_restores_the_original(original, default):
    installed = docker.install_text(original, RT, default=default)
    assert docker.install_text(installed, RT, default=default) == installed  # idempotent
    assert docker.install_text(installed, RT) == installed  # a plain install keeps the default
    restored = docker.uninstall_text(installed)
    assert _meaning(restored) == _meaning(original or "{}")
    data = json.loads(restored)
    assert data.get("default-runtime") == (json.loads(original or "{}").get("default-runtime") or
                                           ("runc" if default else None))
    if original and json.loads(original).get("runtimes") and (json.loads(original).get("default-runtime")
                                                              or not default):
        # nothing added to a file that had runtimes (and a default): the same data, and the same
        # bytes where the file was in the form flexai writes
        assert json.loads(restored) == json.loads(original)
        if docker._render(json.loads(original), original) == original:
            assert restored == original
    assert docker.uninstall_text(restored) == restored


def test_docker_default_chains_to_the_default_it_replaced():
    new = json.loads(docker.install_text(NVIDIA_DEFAULT, RT, default=True))
    assert new["default-runtime"] == "flexai"
    assert new["runtimes"]["flexai"] == {"path": RT, docker.PREVIOUS_KEY: "nvidia",
                                         "runtimeArgs": ["--flexai-runtime=nvidia-container-runtime"]}
    assert new["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    assert docker.uninstall_text(docker.install_text(NVIDIA_DEFAULT, RT, default=True)) == NVIDIA_DEFAULT
    # runc needs no chain, but is still put back
    text = docker.install_text('{"default-runtime": "runc"}', RT, default=True)
    assert json.loads(text)["runtimes"]["flexai"] == {"path": RT, docker.PREVIOUS_KEY: "runc"}
    assert json.loads(docker.uninstall_text(text)) == {"default-runtime": "runc", "runtimes": {}}
    # a runtime without a path is run by its name, as dockerd does
    text = docker.install_text('{"default-runtime": "crun", "runtimes": {"crun": {}}}', RT, default=True)
    assert json.loads(text)["runtimes"]["flexai"]["runtimeArgs"] == ["--flexai-runtime=crun"]


def test_docker_default_install_says_what_it_replaced(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(NVIDIA_DEFAULT)
    plan = docker.plan_install(str(path), RT, default=True)
    assert any("replaced the default runtime 'nvidia': flexai-runtime runs nvidia-container-runtime" in n
               for n in plan.notes), plan.notes


@pytest.mark.parametrize("config, why", [
    ('{"default-runtime": "gone"}', "is not in"),
    ('{"default-runtime": "kata", "runtimes": {"kata": {"runtimeType": "io.containerd.kata.v2"}}}', "shim"),
    ('{"default-runtime": "n", "runtimes": {"n": {"path": "/bin/n", "runtimeArgs": ["--x"]}}}', "runtimeArgs"),
    ('{"default-runtime": "n", "runtimes": {"n": {"path": "/opt/my runtime/n"}}}', "unquoted"),
])
def test_docker_default_refuses_a_default_it_cannot_stand_in_for(config, why):
    with pytest.raises(ConfigError) as exc:
        docker.install_text(config, RT, default=True)
    assert why in str(exc.value) and "\n" not in str(exc.value)
    docker.install_text(config, RT)  # without --default it is fine


def test_docker_uninstall_keeps_an_empty_runtimes_so_a_reload_drops_flexai(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"log-level": "warn"}\n')
    apply(docker.plan_install(str(path), RT, default=True))
    apply(docker.plan_uninstall(str(path)))
    assert json.loads(path.read_text()) == {"log-level": "warn", "runtimes": {}, "default-runtime": "runc"}
    # a file flexai created stays too (deleting it would leave flexai in a reloaded dockerd)
    fresh = tmp_path / "fresh.json"
    apply(docker.plan_install(str(fresh), RT))
    apply(docker.plan_uninstall(str(fresh)))
    assert json.loads(fresh.read_text()) == {"runtimes": {}}


def test_backups_in_the_same_instant_never_overwrite_each_other(tmp_path, monkeypatch):
    from flexai_hook import engines

    monkeypatch.setattr(engines, "_stamp", lambda: "20250101T000000.000000")
    path = tmp_path / "daemon.json"
    texts = ['{"a": 1}\n', '{"a": 2}\n', '{"a": 3}\n']
    path.write_text(texts[0])
    for old, new in zip(texts, texts[1:] + ['{"a": 4}\n']):
        from flexai_hook.engines import Change, Plan
        apply(Plan("docker", "install", [Change(str(path), old, new)]))
    backups = sorted(tmp_path.glob("daemon.json.flexai-backup-*"), key=lambda p: (len(p.name), p.name))
    assert [b.name for b in backups] == ["daemon.json.flexai-backup-20250101T000000.000000",
                                         "daemon.json.flexai-backup-20250101T000000.000000-2",
                                         "daemon.json.flexai-backup-20250101T000000.000000-3"]
    assert [b.read_text() for b in backups] == texts


def test_backup_names_carry_microseconds(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text("{}\n")
    apply(docker.plan_install(str(path), RT))
    (backup,) = tmp_path.glob("daemon.json.flexai-backup-*")
    assert re.fullmatch(r"daemon\.json\.flexai-backup-\d{8}T\d{6}\.\d{6}", backup.name)


@pytest.mark.parametrize("text", ['{"runtimes": {', "[1, 2]", '{"runtimes": []}'])
def test_broken_daemon_json_is_reported_in_one_line_and_never_overwritten(tmp_path, text):
    path = tmp_path / "daemon.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        docker.install_text(text, RT, path=str(path))
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)
    out = subprocess.run([tool("flexai"), "install", "docker", "--config", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and str(path) in out.stderr and out.stderr.count("\n") == 1
    assert path.read_text() == text and list(tmp_path.iterdir()) == [path]


def test_dry_run_prints_a_diff_and_changes_nothing(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(DAEMON_JSON)
    out = subprocess.run([tool("flexai"), "install", "docker", "--config", str(path), "--dry-run", "--runtime-path", RT],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"--- {path}\n+++ {path}\n" in out.stdout and f'+            "path": "{RT}"' in out.stdout
    assert "dry run: nothing changed" in out.stdout
    assert path.read_text() == DAEMON_JSON and list(tmp_path.iterdir()) == [path]


def test_apply_writes_atomically_with_a_backup(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(DAEMON_JSON)
    path.chmod(0o600)
    plan = docker.plan_install(str(path), RT)
    lines = apply(plan)
    (backup,) = tmp_path.glob("daemon.json.flexai-backup-*")
    assert backup.read_text() == DAEMON_JSON and f"backup: {backup}" in lines[0]
    assert path.stat().st_mode & 0o777 == 0o600
    assert docker.plan_install(str(path), RT).effective == []


# --- containerd ----------------------------------------------------------------------------

V2 = """\
# main config
version = 2
imports = [
  "/etc/containerd/site/*.conf",  # site drop-ins
]

[plugins."io.containerd.grpc.v1.cri"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "crun"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["example.com/*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "/usr/bin/crun"
        SystemdCgroup = true
"""
V3 = """\
version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = true
"""
DROPIN = "/etc/containerd/conf.d/flexai.toml"


def test_containerd_import_added_inside_a_multiline_array_keeping_its_comments():
    new = containerd.add_import(V2, DROPIN)
    assert tomllib.loads(new)["imports"] == ["/etc/containerd/site/*.conf", DROPIN]
    assert "# site drop-ins" in new and new.startswith("# main config\nversion = 2\n")
    assert containerd.add_import(new, DROPIN) == new
    assert containerd.remove_import(new, DROPIN) == V2


@pytest.mark.parametrize("text, expected", [
    ("version = 2\n", 'version = 2\nimports = ["%s"]\n' % DROPIN),
    ('version = 2\nimports = []\n[x]\na = 1\n', 'version = 2\nimports = ["%s"]\n[x]\na = 1\n' % DROPIN),
    ('version = 2\nimports = ["/a.toml"] # c\n', 'version = 2\nimports = ["/a.toml", "%s"] # c\n' % DROPIN),
    ('# top\n\n[plugins]\nversion = 3\n', None),  # a key of [plugins], not the config version
])
def test_containerd_imports_cases(text, expected):
    if expected is None:
        with pytest.raises(ConfigError, match="version 1 is not supported"):
            containerd.add_import(text, DROPIN)
        return
    assert containerd.add_import(text, DROPIN) == expected
    back = containerd.remove_import(expected, DROPIN)
    assert tomllib.loads(back).get("imports", []) == [i for i in tomllib.loads(text).get("imports", [])]


def test_containerd_glob_import_already_covers_the_dropin():
    text = 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    assert containerd.add_import(text, DROPIN) == text


def test_containerd_v2_dropin_copies_the_default_runtime_and_the_cri_section():
    text, notes = containerd.dropin_text(V2, RT)
    data = tomllib.loads(text)
    assert data["version"] == 2
    ctd = data["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    flexai = ctd["runtimes"]["flexai"]
    assert flexai["options"] == {"BinaryName": RT, "SystemdCgroup": True}
    assert flexai["pod_annotations"] == ["example.com/*", "flexai.io/*"]
    assert flexai["container_annotations"] == ["flexai.io/*"]
    assert ctd["runtimes"]["crun"]["options"]["BinaryName"] == "/usr/bin/crun"  # kept: section replace
    assert ctd["default_runtime_name"] == "crun"
    assert any("/usr/bin/crun" in n and "runtime.json" in n for n in notes)
    default, _ = containerd.dropin_text(V2, RT, default=True)
    assert tomllib.loads(default)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["default_runtime_name"] == "flexai"


def test_containerd_v2_dropin_follows_a_later_import_that_replaced_the_cri_section():
    site = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/site/cni"\n'
    text, _ = containerd.dropin_text(V2, RT, imported_texts=[("/etc/containerd/site/a.conf", site)])
    cri = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["cni"] == {"bin_dir": "/site/cni"}
    assert set(cri["containerd"]["runtimes"]) == {"runc", "flexai"}


def test_containerd_v3_dropin_holds_only_flexai():
    text, _ = containerd.dropin_text(V3, RT)
    data = tomllib.loads(text)
    assert data == {"version": 3, "plugins": {"io.containerd.cri.v1.runtime": {"containerd": {"runtimes": {"flexai": {
        "runtime_type": "io.containerd.runc.v2", "pod_annotations": ["flexai.io/*"],
        "container_annotations": ["flexai.io/*"], "options": {"SystemdCgroup": True, "BinaryName": RT}}}}}}}


def test_containerd_plan_round_trip_and_drift(tmp_path):
    main = tmp_path / "config.toml"
    main.write_text(V2.replace("/etc/containerd/site/*.conf", str(tmp_path / "site" / "*.conf")))
    original = main.read_text()
    dropin = tmp_path / "conf.d" / "flexai.toml"
    apply(containerd.plan_install(str(main), str(dropin), RT))
    assert containerd.dropin_drift(str(main), str(dropin)) is None
    assert containerd.plan_install(str(main), str(dropin), RT).effective == []
    main.write_text(main.read_text().replace("SystemdCgroup = true", "SystemdCgroup = false"))
    assert "run `flexai install containerd` again" in containerd.dropin_drift(str(main), str(dropin))
    main.write_text(main.read_text().replace("SystemdCgroup = false", "SystemdCgroup = true"))
    apply(containerd.plan_uninstall(str(main), str(dropin)))
    assert main.read_text() == original and not dropin.exists()


@pytest.mark.parametrize("version_output, version", [
    ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", 2),  # Debian 12
    ("containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da", 2),
    ("containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376", 3),
    ("containerd containerd.io v2.0.0 207ad711eabd375a01713109a8a197d197ff6542", 3),
    (None, 2), ("", 2), ("containerd: not a version", 2),  # no containerd: the version both read
])
def test_containerd_missing_main_config_is_created_in_the_installed_containerds_version_and_removed_again(
        tmp_path, version_output, version):
    main, dropin = tmp_path / "config.toml", tmp_path / "conf.d" / "flexai.toml"
    apply(containerd.plan_install(str(main), str(dropin), RT, containerd_version=lambda: version_output))
    assert tomllib.loads(main.read_text()) == {"version": version, "imports": [str(dropin)]}
    assert tomllib.loads(dropin.read_text())["version"] == version
    assert list(tomllib.loads(dropin.read_text())["plugins"]) == [containerd.plugin_id(version)]
    apply(containerd.plan_uninstall(str(main), str(dropin)))
    assert not main.exists() and not dropin.exists()


def test_containerd_version_is_asked_only_without_a_main_config(tmp_path):
    main, dropin = tmp_path / "config.toml", tmp_path / "conf.d" / "flexai.toml"
    main.write_text("version = 2\n")

    def never() -> str:
        raise AssertionError("containerd --version asked although config.toml says its version")

    plan = containerd.plan_install(str(main), str(dropin), RT, containerd_version=never)
    assert "io.containerd.grpc.v1.cri" in plan.changes[0].new


# --- podman --------------------------------------------------------------------------------

CONTAINERS_CONF = """\
# Podman settings
[containers]
default_ulimits = ["nofile=1024:1024"]  # keep

[engine]
runtime = "crun"  # the fast one

[engine.runtimes]
crun = ["/usr/bin/crun"]
kata = [
  "/usr/bin/kata-runtime",  # kata
]

[network]
network_backend = "netavark"
"""


@pytest.mark.parametrize("text", [CONTAINERS_CONF, "[containers]\nx = 1\n", "", None,
                                  "[engine]\nevents_logger = \"file\"\n", "[engine.runtimes]\ncrun = [\"/c\"]\n"])
@pytest.mark.parametrize("default", [False, True])
def test_podman_install_uninstall_round_trip(text, default):
    new = podman.install_conf(text, RT, default)
    data = tomllib.loads(new)
    assert data["engine"]["runtimes"]["flexai"] == [RT]
    assert (data["engine"].get("runtime") == "flexai") == default
    kept = [line for line in (text or "").splitlines() if not line.startswith("runtime =")]
    assert all(line in new.splitlines() for line in kept)  # every other line as it was
    assert podman.install_conf(new, RT, default) == new
    assert podman.uninstall_conf(new) == text


def test_podman_inline_runtimes_table_is_refused():
    with pytest.raises(ConfigError, match="written inline"):
        podman.install_conf('[engine]\nruntimes = {crun = ["/c"]}\n', RT)


def test_podman_hooks_match_flexai_annotations_only():
    texts = podman.hook_texts("/usr/local/bin/flexai-hook", {"FLEXAI_SOCKET": "/s"})
    inject = json.loads(texts["flexai.json"])
    assert inject == {"version": "1.0.0", "stages": ["createContainer"],
                      "hook": {"path": "/usr/local/bin/flexai-hook", "args": ["flexai-hook", "createContainer"],
                               "env": ["FLEXAI_SOCKET=/s"]},
                      "when": {"annotations": {r"^flexai\.io/": ".*"}}}
    assert json.loads(texts["flexai-release.json"])["hook"]["args"] == ["flexai-hook", "poststop"]


# --- tomltext and the hook's path resolution -----------------------------------------------

def test_toml_dumps_round_trips():
    data = {"version": 2, "plugins": {"a.b": {"x": [1, "two"], "y": {"z": True, "w 1": 1.5}}}}
    assert tomllib.loads(tomltext.dumps(data)) == data


def test_headers_skip_multiline_arrays():
    text = 'a = [\n  "[not.a.header]",\n]\n[real]\nk = 1\n'
    assert tomltext.headers(text.splitlines(True)) == [(3, ("real",))]


def test_resolve_in_root_never_leaves_the_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "run").mkdir(parents=True)
    (root / "run" / "flexai").symlink_to("/etc")
    (root / "up").symlink_to("../../../../..")
    assert resolve_in_root(str(root), "/run/flexai/slice.conf") == str(root / "etc" / "slice.conf")
    assert resolve_in_root(str(root), "/up/x") == str(root / "x")
    assert resolve_in_root(str(root), "/../../x") == str(root / "x")


# --- runtime-config/ -----------------------------------------------------------------------

def test_runtime_config_files_are_what_install_writes():
    rc = REPO / "runtime-config"
    assert json.loads((rc / "docker-daemon.json").read_text()) == json.loads(docker.install_text(None, RT))
    assert (rc / "containerd-flexai.toml").read_text() == containerd.dropin_text(
        containerd.DEFAULT_MAIN, RT, main_path=containerd.MAIN_CONFIG)[0]
    assert (rc / "containerd-flexai-v3.toml").read_text() == containerd.dropin_text(  # containerd 2.x
        containerd.default_main(3), RT, main_path=containerd.MAIN_CONFIG)[0]
    assert (rc / "containers.conf").read_text() == podman.install_conf(None, RT)
    for name, text in podman.hook_texts("/usr/local/bin/flexai-hook").items():
        assert (rc / "hooks.d" / name).read_text() == text
    runtimeclass = (rc / "kubernetes-runtimeclass.yaml").read_text()
    assert "kind: RuntimeClass" in runtimeclass and "handler: flexai" in runtimeclass


# --- podman: where this Podman reads hooks (issue 17) ----------------------------------------

BUILTIN = "/usr/share/containers/oci/hooks.d"


@pytest.mark.parametrize("texts, dirs, source", [
    ([], [BUILTIN], None),
    ([("/u", None), ("/e", None)], [BUILTIN], None),
    ([("/u", '[engine]\n#hooks_dir = ["/usr/share/containers/oci/hooks.d"]\n')], [BUILTIN], None),
    ([("/u", "[engine]\nevents_logger = \"file\"\n[engine.runtimes]\nrunc = [\"/r\"]\n")], [BUILTIN], None),
    ([("/u", '[engine]\nhooks_dir = ["/a", "/b"]\n'), ("/e", "[engine]\nruntime = \"crun\"\n")], ["/a", "/b"], "/u"),
    ([("/u", '[engine]\nhooks_dir = ["/a"]\n'), ("/e", '[engine]\nhooks_dir = ["/c"]\n')], ["/c"], "/e"),
    ([("/e", '[engine]\nhooks_dir = []\n')], [], "/e"),
])
def test_podman_hooks_dirs_follow_the_last_containers_conf_that_sets_them(texts, dirs, source):
    assert podman.hooks_dirs(texts) == (dirs, source)


def test_podman_hooks_dirs_of_a_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="hooks_dir is not a list"):
        podman.hooks_dirs([("/e", '[engine]\nhooks_dir = "/a"\n')])


def test_podman_builtin_hooks_dir_is_the_installed_podmans():
    """The installed Podman's own default (`podman --help`, with no containers.conf setting it),
    and its shipped containers.conf leaves it so."""
    binary = shutil.which("podman")
    if binary is None:
        pytest.skip("podman is not installed")
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as empty:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60,
                             env={**env, "CONTAINERS_CONF": empty.name})
    (line,) = [line for line in out.stdout.splitlines() if line.strip().startswith("--hooks-dir")]
    assert line.rstrip().endswith(f"(default [{' '.join(podman.BUILTIN_HOOKS_DIRS)}])"), line
    shipped = Path("/usr/share/containers/containers.conf")
    if shipped.exists():
        assert podman.hooks_dirs([(str(shipped), shipped.read_text())]) == (list(podman.BUILTIN_HOOKS_DIRS), None)


def _old_layout(root, hook="/usr/local/bin/flexai-hook"):
    """What `flexai install podman` wrote before issue 17: hooks in /etc/containers/oci/hooks.d."""
    legacy = root / "etc/containers/oci/hooks.d"
    legacy.mkdir(parents=True)
    for name, text in podman.hook_texts(hook).items():
        (legacy / name).write_text(text)
    (legacy / "other-vendor.json").write_text("{}")
    return legacy


def test_podman_install_without_hooks_dir_writes_where_podman_reads(tmp_path):
    legacy = _old_layout(tmp_path)
    plan = podman.plan_install(str(tmp_path / "etc/containers/containers.conf"), runtime_path=RT, root=str(tmp_path))
    apply(plan)
    builtin = tmp_path / BUILTIN.lstrip("/")
    assert sorted(p.name for p in builtin.iterdir()) == ["flexai-release.json", "flexai.json"]
    assert [p.name for p in legacy.iterdir()] == ["other-vendor.json"]  # flexai's old copies moved, others kept
    assert not [n for n in plan.notes if "hooks" in n]
    assert podman.plan_install(str(tmp_path / "etc/containers/containers.conf"), runtime_path=RT,
                               root=str(tmp_path)).effective == []
    apply(podman.plan_uninstall(str(tmp_path / "etc/containers/containers.conf"), root=str(tmp_path)))
    assert list(builtin.iterdir()) == [] and not (tmp_path / "etc/containers/containers.conf").exists()


def test_podman_install_follows_a_dropin_hooks_dir(tmp_path):
    (tmp_path / "usr/share/containers").mkdir(parents=True)
    (tmp_path / "usr/share/containers/containers.conf").write_text('[engine]\nhooks_dir = ["/x/hooks.d"]\n')
    dropins = tmp_path / "etc/containers/containers.conf.d"
    dropins.mkdir(parents=True)
    (dropins / "50-hooks.conf").write_text('[engine]\nhooks_dir = ["/usr/share/containers/oci/hooks.d", '
                                           '"/etc/containers/oci/hooks.d"]\n')
    assert podman.effective_hooks_dirs(str(tmp_path), env={}) == (
        [str(tmp_path / "usr/share/containers/oci/hooks.d"), str(tmp_path / "etc/containers/oci/hooks.d")],
        str(dropins / "50-hooks.conf"))
    apply(podman.plan_install(str(tmp_path / "etc/containers/containers.conf"), runtime_path=RT, root=str(tmp_path)))
    assert (tmp_path / "etc/containers/oci/hooks.d/flexai.json").exists()  # the last folder wins a name clash
    assert not (tmp_path / "usr/share/containers/oci/hooks.d").exists()


def test_podman_install_into_an_unread_hooks_dir_says_so(tmp_path):
    plan = podman.plan_install(str(tmp_path / "etc/containers/containers.conf"), str(tmp_path / "mine"),
                               runtime_path=RT, root=str(tmp_path))
    (note,) = [n for n in plan.notes if "hooks" in n]
    assert f"Podman reads hooks only from {tmp_path / BUILTIN.lstrip('/')} (its built-in default" in note


def _doctor(root, *args):
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
    out = subprocess.run([tool("flexai"), "doctor", "--engine", "podman", "--podman-root", str(root), *args,
                          "--socket", str(root / "none.sock")], capture_output=True, text=True, timeout=60, env=env)
    return [line for line in out.stdout.splitlines() if "podman:" in line or "fix:" in line], out


def test_doctor_fails_hooks_podman_does_not_read_and_passes_after_install(tmp_path):
    hook = tool("flexai-hook")
    _old_layout(tmp_path, hook)
    conf = tmp_path / "etc/containers/containers.conf"
    conf.write_text(podman.install_conf(None, tool("flexai-runtime")))
    lines, out = _doctor(tmp_path)
    assert out.returncode == 1
    text = "\n".join(lines)
    assert (f"FAIL  podman: flexai's hooks are in {tmp_path}/etc/containers/oci/hooks.d, which this Podman does "
            f"not read: it reads {tmp_path}{BUILTIN} (its built-in default; no containers.conf sets hooks_dir)") in text
    assert "fix: flexai install podman (moves them)" in text
    assert "ok    podman: hooks in" not in text
    install = subprocess.run([tool("flexai"), "install", "podman", "--root", tmp_path, "--hook-path", hook,
                              "--runtime-path", tool("flexai-runtime")], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"})
    assert install.returncode == 0, install.stderr
    assert f"created {tmp_path}{BUILTIN}/flexai.json" in install.stdout
    assert f"removed {tmp_path}/etc/containers/oci/hooks.d/flexai.json" in install.stdout
    lines, out = _doctor(tmp_path)
    assert not [line for line in lines if line.startswith("FAIL  podman")], lines
    assert f"ok    podman: hooks in {tmp_path}{BUILTIN} (read by Podman: its built-in default)" in "\n".join(lines)
