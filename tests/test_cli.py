"""The flexai command: status as a table and JSON, and the README's demo end to end."""

import json
import os
import subprocess

from flexai_hook.cli import status_view
from conftest import GIB, tool


def flexai(*args, socket, timeout=120):
    return subprocess.run([tool("flexai"), *args, "--socket", socket], capture_output=True, text=True,
                          timeout=timeout)


def test_status_table_and_json(make_daemon):
    daemon = make_daemon(memories=("16GiB", "8GiB"))
    daemon.call({"op": "reserve", "container_id": "web-1", "request": {"fraction": 30}})
    daemon.call({"op": "reserve", "container_id": "batch-2", "request": {"memory_bytes": 6 * GIB, "device": "1"}})
    table = flexai("status", socket=daemon.socket)
    assert table.returncode == 0, table.stderr
    assert "web-1" in table.stdout and "batch-2" in table.stdout
    assert "4.80 GiB / 16.00 GiB" in table.stdout and "6.00 GiB / 8.00 GiB" in table.stdout
    data = json.loads(flexai("status", "--json", socket=daemon.socket).stdout)
    assert [len(c["slices"]) for c in data["cards"]] == [1, 1]
    assert data["cards"][1]["slices"][0]["compute"] == 75


def test_status_without_daemon_is_one_line(tmp_path):
    out = flexai("status", socket=str(tmp_path / "none.sock"))
    assert out.returncode == 1
    assert "flexaid is not reachable" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_unreachable_says_the_fix_for_its_cause(tmp_path):
    """Issue 17 item 7: a user the socket's permissions keep out is told to join its group,
    not to start flexaid; a missing daemon is told how to start it on this host."""
    import errno

    from flexai_hook import client

    sock = tmp_path / "s.sock"
    sock.write_bytes(b"")
    msg = client.unreachable(str(sock), PermissionError(errno.EACCES, "Permission denied"))
    assert "not open to this user" in msg and "usermod -aG root" in msg and "start it" not in msg
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory")
    assert "systemctl start flexaid.socket" in client.unreachable("/x.sock", gone, systemd=True)
    without = client.unreachable("/x.sock", gone, systemd=False)
    assert "systemctl" not in without and "flexaid --config /etc/flexai/flexaid.json &" in without


def test_status_as_a_user_outside_the_sockets_group_says_to_join_it(make_daemon):
    """A real non-root user (nobody, no supplementary groups) on the daemon's 0660 socket."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        import pytest

        pytest.skip("needs root and setpriv (util-linux) to run as another user")
    daemon = make_daemon()
    os.chmod(os.path.dirname(daemon.socket), 0o755)  # let nobody reach the socket itself
    for parent in (os.path.dirname(os.path.dirname(daemon.socket)),):
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", tool("flexai"), "status",
                          "--socket", daemon.socket], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not open to this user" in out.stderr and "start it" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_render_empty():
    text = status_view.render({"backend": "simulated", "policy": "flexai", "cards": []}, "/s")
    assert "no slices reserved" in text


def test_demo_end_to_end(daemon, tmp_path):
    """What the README's first command ends with: a sliced container, its reservation, then none."""
    out = subprocess.run(
        [tool("flexai"), "demo", "--seconds", "2", "--runtime-root", str(tmp_path / "runc"), "--socket", daemon.socket],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "FLEXAI_RUNTIME": "runc", "FLEXAI_RUNTIME_CONFIG": "/nonexistent"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    during, after = out.stdout.split("# after the container exited")
    assert "flexai-demo-" in during and "30%" in during
    assert "no slices reserved" in after
    assert "compute_limit=30" in out.stdout
    # The container's CUDA view, through libflexai over the simulated driver: one card, its
    # total the 30 % slice of the 16 GiB card, and the driver's refusal past it.
    assert "CUDA driver API (driver 13.0): 1 device(s)" in out.stdout, out.stdout
    assert "total 4.80 GiB" in out.stdout and "cuDeviceTotalMem 4.80 GiB" in out.stdout
    assert "refused after" in out.stdout and "CUDA_ERROR_OUT_OF_MEMORY" in out.stdout
    assert "NVML: 1 device(s)" in out.stdout
    assert daemon.slices() == []


def _as_nobody_or_skip():
    import shutil

    import pytest

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to run as another user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_install_as_a_user_says_to_run_it_as_root(tmp_path):
    """Issue 17 item 7: a non-root `flexai install` named a raw errno ([Errno 13] ... on a backup
    file); it says which file, why, and the command to run instead, in one line."""
    import tempfile

    as_nobody = _as_nobody_or_skip()
    etc = tempfile.mkdtemp(prefix="flexai-etc-")  # root's, readable by all, as /etc/docker is
    try:
        os.chmod(etc, 0o755)
        config = os.path.join(etc, "daemon.json")
        with open(config, "w") as f:
            f.write('{"log-level": "warn"}\n')
        os.chmod(config, 0o644)
        for action in ("install", "uninstall"):
            if action == "uninstall":  # something to remove: what install would have written
                subprocess.run([tool("flexai"), "install", "docker", "--config", config], check=True,
                               capture_output=True, timeout=60)
                for name in os.listdir(etc):
                    if name != "daemon.json":
                        os.unlink(os.path.join(etc, name))
            before = open(config).read()
            out = subprocess.run([*as_nobody, tool("flexai"), action, "docker", "--config", config],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 1, out.stdout + out.stderr
            (line,) = out.stderr.splitlines()
            assert line == (f"Error: cannot write {config} (Permission denied): engine configs belong to root; run "
                            f"`sudo flexai {action} docker --config {config}` (or `flexai {action} docker --config "
                            f"{config} --dry-run` to see the changes first)")
            assert open(config).read() == before and os.listdir(etc) == ["daemon.json"]
    finally:
        import shutil

        shutil.rmtree(etc)


def test_status_watch_waits_for_flexaid_to_come_back(make_daemon, tmp_path):
    """Issue 17 item 7: `flexai status --watch` outlives a flexaid restart: one line while it is
    gone, the table again once it answers, and Ctrl-C (SIGINT) ends it with status 0."""
    import signal
    import time

    daemon = make_daemon()
    output = tmp_path / "watch.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen([tool("flexai"), "status", "--watch", "--interval", "0.2", "--socket", daemon.socket],
                                stdout=out, stderr=subprocess.STDOUT)

    def wait_for(text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = output.read_text()
            if text in seen:
                return seen
            assert proc.poll() is None, f"status --watch exited with {proc.returncode}:\n{seen}"
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never shown:\n{output.read_text()}")

    try:
        wait_for("no slices reserved")
        daemon.stop()
        wait_for("waiting for it")
        daemon.start()
        daemon.call({"op": "reserve", "container_id": "after-restart", "request": {"fraction": 10}})
        seen = wait_for("after-restart")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seen = output.read_text()
    (gone,) = [line for line in seen.splitlines() if "not answering" in line]  # once per outage
    assert gone.startswith(f"flexaid is not answering at {daemon.socket} (") and gone.endswith(
        "); waiting for it, Ctrl-C to stop")
    assert "Traceback" not in seen


def test_status_watch_gives_up_at_once_when_waiting_cannot_help(make_daemon):
    """A user the socket keeps out is told how to get in, not made to wait forever."""
    as_nobody = _as_nobody_or_skip()
    daemon = make_daemon()
    os.chmod(os.path.dirname(daemon.socket), 0o755)
    parent = os.path.dirname(os.path.dirname(daemon.socket))
    os.chmod(parent, os.stat(parent).st_mode | 0o005)
    out = subprocess.run([*as_nobody, tool("flexai"), "status", "--watch", "--socket", daemon.socket],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not open to this user" in out.stderr and "waiting" not in out.stdout
