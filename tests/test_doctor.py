"""`flexai doctor` says what is true on this host (issue 17 item 6): where libflexai.so is,
which containerd reads the config, engines that are not there, and no `systemctl` advice
without systemd. Pure functions on temporary folders and a fake /proc; nothing here reads the
host's /etc, /run or /opt."""

from __future__ import annotations

import json
import os

from flexai_hook.devices import library
from flexai_hook.engines import apply, containerd
from flexai_hook.engines import doctor as d

RT = "/usr/bin/true"  # an executable the drop-in can name


def fake_proc(root, processes, btime=1_000_000):
    """A /proc tree: `processes` is [(pid, ppid, comm, start ticks, argv)]."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu 0 0 0 0\nbtime {btime}\n")
    for pid, ppid, comm, start, argv in processes:
        p = root / str(pid)
        p.mkdir()
        rest = " ".join(["1"] * 17)  # fields 5..21
        (p / "stat").write_text(f"{pid} ({comm}) S {ppid} {rest} {start} 0 0\n")
        (p / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return str(root)


DOCKERD_CHILD = ("containerd", "--config", "/var/run/docker/containerd/containerd.toml", "--log-level", "info")


# --- 1. libflexai.so: where the runtime takes it from --------------------------------------

def test_library_is_found_where_the_runtime_mounts_it_from(tmp_path, monkeypatch):
    (tmp_path / library.LIBRARY_NAME).write_bytes(b"\x7fELF")
    monkeypatch.setattr(library, "library_dir", lambda: str(tmp_path))
    monkeypatch.delenv("FLEXAI_LIBRARY", raising=False)
    (finding,) = d.check_library()
    assert finding.level == d.OK, finding
    assert str(tmp_path / library.LIBRARY_NAME) in finding.message


def test_library_not_built_fails_and_names_the_path(tmp_path):
    (finding,) = d.check_library(str(tmp_path))
    assert finding.level == d.FAIL
    assert f"{tmp_path}/libflexai.so is not built" in finding.message
    assert "flexai_hook.install.cbuild" in finding.fix


# --- 2. dockerd's own containerd is not the system one --------------------------------------

def test_containerd_owner_tells_dockerds_containerd_from_the_system_one():
    assert d.containerd_owner(DOCKERD_CHILD, "dockerd") == "dockerd"
    # re-parented after dockerd restarted: its config under /var/run/docker/containerd still says so
    assert d.containerd_owner(DOCKERD_CHILD, "init") == "dockerd"
    assert d.containerd_owner(("containerd", "--address", "/run/docker/containerd/containerd.sock"), "init") == "dockerd"
    assert d.containerd_owner(("/usr/bin/containerd",), "systemd") == "system"
    # a containerd serving only the socket dockerd was given with --containerd, with its own config
    mine = ("containerd", "-a", "/srv/d/ctr.sock", "-c", "/srv/d/ctr.toml")
    assert d.containerd_owner(mine, "sh", ("/srv/d/ctr.sock",)) == "dockerd"
    # Debian's docker.service: dockerd --containerd=/run/containerd/containerd.sock, the system one
    system = ("/usr/bin/containerd",)
    assert d.containerd_owner(system, "systemd", ("/run/containerd/containerd.sock",)) == "system"


def _installed_containerd(tmp_path):
    main, dropin = tmp_path / "config.toml", tmp_path / "conf.d" / "flexai.toml"
    apply(containerd.plan_install(str(main), str(dropin), RT))
    old = 1_000_000 + 50  # the fake /proc boots at 1_000_000: the config changed after its processes started
    os.utime(main, (old + 500, old + 500))
    os.utime(dropin, (old + 500, old + 500))
    return str(main), str(dropin)


def test_dockerds_containerd_started_before_the_config_is_not_a_failure(tmp_path):
    main, dropin = _installed_containerd(tmp_path)
    ticks = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(tmp_path / "proc", [(100, 1, "dockerd", 10 * ticks, ("dockerd",)),
                                         (120, 100, "containerd", 11 * ticks, DOCKERD_CHILD)])
    findings = d.check_containerd(main, dropin, root=str(tmp_path), proc=proc)
    assert not [f for f in findings if f.level == d.FAIL], findings
    assert any("pid 120 is dockerd's own containerd" in f.message for f in findings), findings


def test_the_containerd_that_reads_the_config_is_the_one_checked(tmp_path):
    main, dropin = _installed_containerd(tmp_path)
    ticks = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(tmp_path / "proc", [(120, 100, "containerd", 11 * ticks, DOCKERD_CHILD),
                                         (130, 1, "containerd", 12 * ticks, ("containerd", "--config", main))])
    findings = d.check_containerd(main, dropin, root=str(tmp_path), proc=proc)
    (restart,) = [f for f in findings if "pid" in f.message]
    assert restart.level == d.FAIL and "containerd (pid 130) started before its config" in restart.message


# --- 3. containerd not configured by a Docker-only user: info, not FAIL --------------------

def test_containerd_not_configured_for_flexai_is_info_not_fail(tmp_path):
    main = tmp_path / "config.toml"  # what Debian's containerd package ships, no flexai drop-in
    main.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.6"\n')
    proc = fake_proc(tmp_path / "proc", [])
    findings = d.check_containerd(str(main), str(tmp_path / "conf.d/flexai.toml"), root=str(tmp_path), proc=proc)
    assert [f.level for f in findings] == [d.INFO], findings
    assert findings[0].fix == "flexai install containerd"


def test_engines_not_installed_are_info(tmp_path, monkeypatch):
    monkeypatch.setattr(d.shutil, "which", lambda name: None)
    monkeypatch.delenv("CONTAINERS_CONF", raising=False)
    proc = fake_proc(tmp_path / "proc", [])
    for finding in (d.check_docker(str(tmp_path / "daemon.json"), str(tmp_path), proc)
                    + d.check_containerd(str(tmp_path / "c.toml"), str(tmp_path / "f.toml"), str(tmp_path), proc)
                    + d.check_podman(str(tmp_path / "containers.conf"), None, str(tmp_path))):
        assert finding.level == d.INFO and "is not installed" in finding.message, finding


# --- 5. no systemctl advice without systemd ---------------------------------------------------

def test_systemd_is_detected_from_run_systemd_system(tmp_path):
    assert not d.systemd_running(str(tmp_path))
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert d.systemd_running(str(tmp_path))


def test_flexaid_start_advice_without_systemd_is_the_daemon_itself(tmp_path):
    (finding,) = [f for f in d.check_daemon(str(tmp_path / "none.sock"), root=str(tmp_path)) if f.topic == "flexaid"]
    assert finding.level == d.FAIL
    assert "systemctl" not in finding.fix and "flexaid --config /etc/flexai/flexaid.json" in finding.fix
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/flexaid.socket").write_text("")
    (finding,) = [f for f in d.check_daemon(str(tmp_path / "none.sock"), root=str(tmp_path)) if f.topic == "flexaid"]
    assert finding.fix.startswith("systemctl start flexaid.socket")


def test_restart_advice_follows_the_init_system():
    assert "systemctl reload docker" in d.restart_fix("dockerd", True)
    assert d.restart_fix("dockerd", False, 77).startswith("reload dockerd so it reads the runtimes again: `kill -HUP 77`")
    assert "systemctl" not in d.restart_fix("dockerd", False)
    assert "systemctl restart containerd" in d.restart_fix("containerd", True)
    assert "`service containerd restart`" in d.restart_fix("containerd", False, 5, ("containerd",), init_script=True)
    no_init = d.restart_fix("containerd", False, 5, ("containerd", "--config", "/etc/c t.toml"))
    assert "systemctl" not in no_init and "`kill 5`, then `containerd --config '/etc/c t.toml' &`" in no_init


def test_containerd_restart_advice_on_a_host_without_systemd(tmp_path):
    main, dropin = _installed_containerd(tmp_path)
    ticks = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(tmp_path / "proc", [(130, 1, "containerd", 12 * ticks, ("containerd", "--config", main))])
    (restart,) = [f for f in d.check_containerd(main, dropin, root=str(tmp_path), proc=proc) if "pid 130" in f.message]
    assert restart.level == d.FAIL and "systemctl" not in restart.fix and "`kill 130`" in restart.fix


# --- where each card's driver comes from (check_cdi) ---------------------------------------------

NVML_CARD = {"index": 0, "uuid": "GPU-11111111-2222-3333-4444-555555555555", "name": "H200", "memory": 141 << 30,
             "device_paths": ["/dev/nvidia0"]}


def _cdi_setup(tmp_path, spec: str | None = None, **settings) -> str:
    cdi_dir = tmp_path / "cdi"
    cdi_dir.mkdir()
    if spec is not None:
        (cdi_dir / "nvidia.json").write_text(spec)
    config = tmp_path / "runtime.json"
    config.write_text(json.dumps({"cdi_spec_dirs": str(cdi_dir), **settings}))
    return str(config)


SPEC = ('{"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [{"name": "%s", '
        '"containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}}]}')


def test_a_card_with_its_cdi_device_is_ok(tmp_path):
    (finding,) = d.check_cdi([NVML_CARD], "nvml", _cdi_setup(tmp_path, SPEC % NVML_CARD["uuid"]))
    assert finding.level == d.OK and f"nvidia.com/gpu={NVML_CARD['uuid']}" in finding.message


def test_a_real_card_without_a_cdi_spec_warns_with_the_command_to_run(tmp_path):
    (finding,) = d.check_cdi([NVML_CARD], "nvml", _cdi_setup(tmp_path))
    assert finding.level == d.WARN and "not its driver" in finding.message
    assert finding.fix == "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"


def test_a_chained_vendor_runtime_brings_the_driver(tmp_path):
    (finding,) = d.check_cdi([NVML_CARD], "nvml",
                             _cdi_setup(tmp_path, chain_without_cdi="nvidia-container-runtime"))
    assert finding.level == d.OK and "nvidia-container-runtime" in finding.message


def test_a_spec_that_lacks_the_card_fails_and_a_broken_one_is_named(tmp_path):
    (finding,) = d.check_cdi([NVML_CARD], "nvml", _cdi_setup(tmp_path, SPEC % "7"))
    assert finding.level == d.FAIL and "no CDI device for card 0" in finding.message
    (tmp_path / "b").mkdir()
    broken = d.check_cdi([NVML_CARD], "nvml", _cdi_setup(tmp_path / "b", '{"cdiVersion": "0.5.0", "kind": 3}'))
    assert [f.level for f in broken] == [d.WARN, d.FAIL] and "nvidia.json" in broken[0].message


def test_simulated_cards_use_the_simulators_libraries(tmp_path):
    card = {**NVML_CARD, "device_paths": ["/dev/flexai-sim0"]}
    (finding,) = d.check_cdi([card], "simulated", _cdi_setup(tmp_path))
    assert finding.level == d.OK and "simulator" in finding.message


def test_a_bad_runtime_config_is_one_failure(tmp_path):
    config = tmp_path / "runtime.json"
    config.write_text('{"sim_driver_mounts": "no"}')
    (finding,) = d.check_cdi([NVML_CARD], "nvml", str(config))
    assert finding.level == d.FAIL and "sim_driver_mounts" in finding.message
