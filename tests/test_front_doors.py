"""The C front doors of flexai-runtime and flexai-hook (libflexai/launch/): what they do
without Python, and that they hand everything else to the Python implementation.

Each test copies the built program into a temporary bin directory. With no `<name>-py`
beside it, a hand-over to Python shows as "cannot start .../<name>-py"; the real runtime is a
script that records the argv it was given."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from flexai_hook.oci import argv as argv_mod
from flexai_hook.install import cbuild
from test_argv import CASES

LIB = cbuild.package_lib_dir()


@pytest.fixture(scope="module")
def built():
    cbuild.build(LIB)
    return LIB / "bin"


@pytest.fixture
def bindir(tmp_path, built):
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("flexai-runtime", "flexai-hook"):
        shutil.copy2(built / name, d / name)
    fake = d / "fake-runc"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "$FAKE_ARGV"\n')
    fake.chmod(0o755)
    return d


def run_front(bindir, args, tmp_path, cwd=None, env=None, stdin=b""):
    record = tmp_path / "argv.txt"
    record.unlink(missing_ok=True)
    full_env = {"PATH": "/usr/bin:/bin", "FAKE_ARGV": str(record), "FLEXAI_RUNTIME": str(bindir / "fake-runc"),
                "FLEXAI_RUNTIME_CONFIG": str(tmp_path / "no-runtime.json"),
                "FLEXAI_SOCKET": str(tmp_path / "no-daemon.sock"), **(env or {})}
    out = subprocess.run([str(bindir / "flexai-runtime"), *args], cwd=cwd or tmp_path, env=full_env,
                         input=stdin, capture_output=True, timeout=30)
    passed = record.read_text().splitlines() if record.exists() else None
    return out, passed


def with_bundles(argv, bundle, base: Path):
    """argv with its bundle (and cwd when it names none) pointing at a real directory."""
    target = base / "bundle"
    target.mkdir(exist_ok=True)
    if bundle is None:
        return list(argv), target, target  # runc uses the current directory
    out = []
    for i, a in enumerate(argv):
        if i and argv[i - 1] in ("--bundle", "-b") and a == bundle:
            a = str(target)
        elif a == f"--bundle={bundle}":
            a = f"--bundle={target}"
        out.append(a)
    return out, target, base


@pytest.mark.parametrize("argv, sub, cid, bundle, log, fmt, root", CASES)
def test_only_create_and_run_of_a_flexai_config_need_python(bindir, tmp_path, argv, sub, cid, bundle, log, fmt, root):
    args, target, cwd = with_bundles(argv, bundle, tmp_path)
    for marked in (True, False):
        env = ["FLEXAI_FRACTION=0.3"] if marked else ["PATH=/bin"]
        (target / "config.json").write_text(json.dumps({"process": {"env": env}}))
        out, passed = run_front(bindir, args, tmp_path, cwd=cwd)
        if (marked and sub in ("create", "run")) or argv_mod.about(args):  # --help, --version: flexai's
            assert passed is None and b"flexai-runtime-py" in out.stderr, out.stderr
        else:
            # Straight to the real runtime, argv unchanged, no Python involved.
            assert out.returncode == 0, out.stderr
            assert passed == [str(bindir / "fake-runc"), *args]


def test_unreadable_bundle_config_goes_to_python(bindir, tmp_path):
    out, passed = run_front(bindir, ["create", "--bundle", str(tmp_path / "missing"), "c1"], tmp_path)
    assert passed is None and b"flexai-runtime-py" in out.stderr


@pytest.mark.parametrize("config, expect", [
    ('{"runtime": "%s"}', "fake"),
    ('{ "socket" : "/run/x.sock",\n  "runtime":"%s" }\n', "fake"),
    ('{"socket": "/run/x.sock"}', "runc-on-path"),
    ('{}', "runc-on-path"),
    ('{"runtime": "%s", "extra": {"nested": 1}}', "python"),
    ('{"runtime": "a\\\\"b"}', "python"),
    ('not json', "python"),
    ('{"runtime": "%s"} trailing', "python"),
])
def test_runtime_config_is_read_or_left_to_python(bindir, tmp_path, config, expect):
    path = tmp_path / "runtime.json"
    path.write_text(config.replace("%s", str(bindir / "fake-runc")) if "%s" in config else config)
    runc_dir = tmp_path / "pathbin"
    runc_dir.mkdir()
    shutil.copy2(bindir / "fake-runc", runc_dir / "runc")
    out, passed = run_front(bindir, ["state", "c1"], tmp_path,
                            env={"FLEXAI_RUNTIME": "", "FLEXAI_RUNTIME_CONFIG": str(path),
                                 "PATH": f"{runc_dir}:/usr/bin:/bin"})
    if expect == "python":
        assert passed is None and b"flexai-runtime-py" in out.stderr
    elif expect == "fake":
        assert passed == [str(bindir / "fake-runc"), "state", "c1"]
    else:
        assert passed == [str(runc_dir / "runc"), "state", "c1"]


def test_never_execs_itself_as_the_real_runtime(bindir, tmp_path):
    os.symlink(bindir / "flexai-runtime", bindir / "runc")
    out, passed = run_front(bindir, ["state", "c1"], tmp_path,
                            env={"FLEXAI_RUNTIME": "runc", "PATH": f"{bindir}:/nonexistent"})
    assert passed is None and b"flexai-runtime-py" in out.stderr


class FakeDaemon:
    """Answers one connection per reply given, in order; records each request line."""

    def __init__(self, path: Path, *replies: bytes | None):
        self.path, self.replies, self.received = path, list(replies), []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        for reply in self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by the test: nobody connected
            with conn:
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                self.received.append(buf)
                if reply is not None:
                    conn.sendall(reply)

    def close(self):
        self.sock.close()
        self.thread.join(5)


def hook(bindir, args, stdin: bytes, sock: Path, retry: str = "1"):
    # a short retry window: without a daemon the hook tries again for that long
    return subprocess.run([str(bindir / "flexai-hook"), *args], input=stdin, capture_output=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "FLEXAI_SOCKET": str(sock), "FLEXAI_RELEASE_RETRY": retry})


STATE = b'{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/b","annotations":{"a":"x y"}}'


@pytest.mark.parametrize("reply, said", [
    (b'{"ok":true,"released":true}\n', b""),
    (b'{"ok":false,"error":"invalid request: state.id too long"}\n', b"state.id too long"),
])
def test_poststop_forwards_the_state_and_reports_refusals(bindir, tmp_path, reply, said):
    daemon = FakeDaemon(tmp_path / "d.sock", reply)
    try:
        out = hook(bindir, ["poststop"], b"\n  " + STATE + b"\n", tmp_path / "d.sock")
    finally:
        daemon.close()
    assert out.returncode == 0
    assert daemon.received == [b'{"op":"release","state":' + STATE + b"}\n"]
    assert json.loads(daemon.received[0])["state"]["id"] == "c1"
    assert said in out.stderr and (said or out.stderr == b"")


def test_poststop_without_a_daemon_says_so_and_exits_zero(bindir, tmp_path):
    out = hook(bindir, ["poststop"], STATE, tmp_path / "nobody.sock")
    assert out.returncode == 0 and b"flexaid is not reachable at" in out.stderr


@pytest.mark.parametrize("garbage", [b"", b"garbage", b"[1,2]", b'{"a":\n1}', b"{"])
def test_poststop_sends_nothing_for_garbage(bindir, tmp_path, garbage):
    daemon = FakeDaemon(tmp_path / "d.sock", b'{"ok":true}\n')
    out = hook(bindir, ["poststop"], garbage, tmp_path / "d.sock")
    daemon.sock.close()  # unblocks accept() if nothing connected
    assert out.returncode == 0 and b"not a JSON object" in out.stderr and daemon.received == []


def test_other_hook_stages_go_to_python(bindir, tmp_path):
    out = hook(bindir, ["createContainer"], STATE, tmp_path / "d.sock")
    assert out.returncode == 1 and b"flexai-hook-py" in out.stderr


def test_poststop_retries_a_release_flexaid_could_not_persist(bindir, tmp_path):
    """Attack 5: a release answered "...; retry" (flexaid's writer died) used to be dropped."""
    retry = b'{"ok":false,"error":"flexaid cannot save its ledger /l: the file writer exited; retry"}\n'
    daemon = FakeDaemon(tmp_path / "d.sock", retry, b'{"ok":true,"released":true}\n')
    try:
        out = hook(bindir, ["poststop"], STATE, tmp_path / "d.sock", retry="10")
    finally:
        daemon.close()
    assert out.returncode == 0 and out.stderr == b"", out.stderr
    assert daemon.received == [b'{"op":"release","state":' + STATE + b"}\n"] * 2


def test_poststop_does_not_retry_a_refusal(bindir, tmp_path):
    daemon = FakeDaemon(tmp_path / "d.sock", b'{"ok":false,"error":"invalid request: bad id"}\n',
                        b'{"ok":true,"released":true}\n')
    try:
        out = hook(bindir, ["poststop"], STATE, tmp_path / "d.sock", retry="10")
    finally:
        daemon.close()
    assert out.returncode == 0 and b"bad id" in out.stderr and len(daemon.received) == 1


def _big_state(cid: str = "c1") -> bytes:
    """An OCI state over flexaid's 1 MiB line limit, whose annotations hold decoys of the id."""
    tricky = 'x"}, "id": "decoy" \\' * 4
    annotations = {"id": "nested-decoy", "k": tricky, "big": "y" * (2 << 20), "list": [{"id": "d"}] * 3}
    return json.dumps({"ociVersion": "1.0.2", "annotations": annotations, "status": "stopped",
                       "id": cid, "bundle": "/b"}, indent=1).encode()


def test_poststop_sends_only_the_id_of_a_state_over_the_line_limit(bindir, tmp_path):
    from flexai_hook.daemon import server

    state = _big_state()
    assert len(state) > server.MAX_LINE
    daemon = FakeDaemon(tmp_path / "d.sock", b'{"ok":true,"released":true}\n')
    try:
        out = hook(bindir, ["poststop"], state, tmp_path / "d.sock")
    finally:
        daemon.close()
    assert out.returncode == 0 and out.stderr == b"", out.stderr
    assert daemon.received == [b'{"op":"release","state":{"id":"c1"}}\n']


@pytest.mark.parametrize("state", [
    b'{"annotations": {"id": "nested"}, "big": "' + b"y" * (2 << 20) + b'"}',  # no top-level id
    b'{"id": 5, "big": "' + b"y" * (2 << 20) + b'"}',  # not a string
    b'{"big": "' + b"y" * (2 << 20),  # cut short
])
def test_poststop_sends_nothing_for_a_big_state_without_an_id(bindir, tmp_path, state):
    daemon = FakeDaemon(tmp_path / "d.sock", b'{"ok":true}\n')
    out = hook(bindir, ["poststop"], state, tmp_path / "d.sock")
    daemon.sock.close()
    assert out.returncode == 0 and daemon.received == []
    assert len(out.stderr.splitlines()) == 1 and b"nothing released" in out.stderr


def test_deeply_nested_config_is_one_line_and_reserves_nothing(tmp_path, daemon):
    """Attack 5: a 100 000-deep config.json gave a 20-line traceback. Through the installed
    front door (flexaid refuses the prepare, Python then says why in one line)."""
    from conftest import tool

    b = tmp_path / "deep"
    b.mkdir()
    text = '{"process": {"env": ["FLEXAI_FRACTION=0.3"]}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (b / "config.json").write_text(text)
    fake = tmp_path / "fake-runc"
    fake.write_text("#!/bin/sh\ntouch \"$0.ran\"\n")
    fake.chmod(0o755)
    out = subprocess.run([tool("flexai-runtime"), "--log", str(tmp_path / "log.json"), "create", "--bundle", str(b), "d1"],
                         env={"PATH": "/usr/bin:/bin", "FLEXAI_RUNTIME": str(fake), "FLEXAI_SOCKET": daemon.socket,
                              "FLEXAI_RUNTIME_CONFIG": str(tmp_path / "none.json")},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert "nested too deeply" in line and str(b / "config.json") in line
    assert "level=error" in (tmp_path / "log.json").read_text()  # the engine's log (runc's text format)
    assert (b / "config.json").read_text() == text
    assert daemon.slices() == [] and not (tmp_path / "fake-runc.ran").exists()


# ---- sliced create/run: flexaid prepares the bundle, no Python process --------------------

SLICED = {"ociVersion": "1.0.2", "process": {"args": ["true"], "env": ["FLEXAI_FRACTION=0.3"]},
          "root": {"path": "rootfs"}}


def sliced_bundle(tmp_path, config=SLICED) -> Path:
    b = tmp_path / "bundle"
    b.mkdir(exist_ok=True)
    (b / "config.json").write_text(json.dumps(config, indent=2))
    (b / "config.json").chmod(0o640)
    return b


def test_sliced_create_is_prepared_by_flexaid_and_run_without_python(bindir, tmp_path):
    edited = {**SLICED, "annotations": {"edited": "by flexaid"}}
    reply = json.dumps({"ok": True, "spec": edited}, separators=(",", ":")).encode() + b"\n"
    daemon = FakeDaemon(tmp_path / "d.sock", reply)
    b = sliced_bundle(tmp_path)
    args = ["--root", "rel-root", "--log", "/x.log", "create", "--bundle", str(b), "--pid-file", "p", "c1"]
    try:
        out, passed = run_front(bindir, args, tmp_path, env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert out.returncode == 0 and b"flexai-runtime-py" not in out.stderr, out.stderr
    assert passed == [str(bindir / "fake-runc"), *args]  # the real runtime, argv unchanged
    assert json.loads((b / "config.json").read_text()) == edited
    assert (b / "config.json").stat().st_mode & 0o777 == 0o640  # mode kept
    assert not [p for p in b.iterdir() if p.name.startswith(".config.json")]  # no temp file left
    (request,) = [json.loads(line) for line in daemon.received]
    assert request == {"op": "prepare", "container_id": "c1", "spec": SLICED, "settings": {},
                       "hook": str(bindir / "flexai-hook"), "socket": str(tmp_path / "d.sock"),
                       "runtime": {"binary": str(bindir / "fake-runc"), "root": str(tmp_path / "rel-root")}}
    from flexai_hook import validation

    assert validation.problem("protocol.schema.json", request, "prepare_message") is None


ANNOTATED = {"ociVersion": "1.0.2", "process": {"args": ["true"], "env": ["PATH=/bin"]}, "root": {"path": "rootfs"},
             "annotations": {"cdi.k8s.io/gpu.flexai.io_uid": "vendor.example/gpu=uid-gpu-0"}}


def test_cdi_annotations_without_a_request_are_prepared_by_flexaid_and_run_without_python(bindir, tmp_path):
    """A DRA claim's container names its CDI device in a cdi.k8s.io/ annotation and asks for no
    slice: flexaid applies the device ("slice": "none") and the real runtime takes over by exec
    (no child to watch, no release to send)."""
    edited = {**ANNOTATED, "process": {"args": ["true"], "env": ["PATH=/bin", "FROM_CDI=1"]}}
    reply = json.dumps({"ok": True, "slice": "none", "spec": edited}, separators=(",", ":")).encode() + b"\n"
    daemon = FakeDaemon(tmp_path / "d.sock", reply, b'{"ok":true}\n')
    b = sliced_bundle(tmp_path, ANNOTATED)
    (bindir / "fake-runc").write_text('#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "$FAKE_ARGV"\nexit 3\n')
    args = ["create", "--bundle", str(b), "c6"]
    try:
        out, passed = run_front(bindir, args, tmp_path, env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert out.returncode == 3 and b"flexai-runtime-py" not in out.stderr, out.stderr
    assert passed == [str(bindir / "fake-runc"), *args]
    assert json.loads((b / "config.json").read_text()) == edited
    (request,) = [json.loads(line) for line in daemon.received]  # a failed start releases nothing
    assert request["op"] == "prepare" and request["spec"] == ANNOTATED


def test_a_slice_answer_it_does_not_know_goes_to_python(bindir, tmp_path):
    reply = json.dumps({"ok": True, "slice": "other", "spec": ANNOTATED}, separators=(",", ":")).encode() + b"\n"
    daemon = FakeDaemon(tmp_path / "d.sock", reply)
    b = sliced_bundle(tmp_path, ANNOTATED)
    try:
        out, passed = run_front(bindir, ["create", "--bundle", str(b), "c7"], tmp_path,
                                env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert passed is None and b"flexai-runtime-py" in out.stderr


def test_other_annotations_pass_through_without_asking_flexaid(bindir, tmp_path):
    plain = {**ANNOTATED, "annotations": {"io.kubernetes.cri.container-type": "container", "cdi.k8s.io": "x"}}
    daemon = FakeDaemon(tmp_path / "d.sock", b'{"ok":true,"spec":null}\n')
    b = sliced_bundle(tmp_path, plain)
    try:
        out, passed = run_front(bindir, ["run", "--bundle", str(b), "c8"], tmp_path,
                                env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert out.returncode == 0 and passed == [str(bindir / "fake-runc"), "run", "--bundle", str(b), "c8"]
    assert daemon.received == []


def test_prepare_request_carries_the_runtime_config_and_its_socket(bindir, tmp_path):
    sock = tmp_path / "d.sock"
    config = tmp_path / "runtime.json"
    config.write_text('{\n  "runtime": "%s",\n  "socket": "%s"\n}\n' % (bindir / "fake-runc", sock))
    daemon = FakeDaemon(sock, b'{"ok":true,"spec":null}\n')
    b = sliced_bundle(tmp_path)
    try:
        out, passed = run_front(bindir, ["run", "-b", str(b), "c2"], tmp_path,
                                env={"FLEXAI_RUNTIME": "", "FLEXAI_SOCKET": "", "FLEXAI_RUNTIME_CONFIG": str(config)})
    finally:
        daemon.close()
    # flexaid found no request after all: the real runtime runs on the untouched bundle
    assert out.returncode == 0 and passed == [str(bindir / "fake-runc"), "run", "-b", str(b), "c2"]
    assert json.loads((b / "config.json").read_text()) == SLICED
    request = json.loads(daemon.received[0])
    assert request["settings"] == {"runtime": str(bindir / "fake-runc"), "socket": str(sock)}
    assert request["socket"] == str(sock) and "root" not in request["runtime"]


@pytest.mark.parametrize("reply", [
    b'{"ok":false,"error":"FLEXAI_FRACTION: 1.5 is not a fraction in 0.01..1"}\n',
    b'{"ok":true,"reservation":{}}\n',
    b"garbage\n",
    None,  # connection closed without an answer
])
def test_anything_but_a_prepared_spec_goes_to_python(bindir, tmp_path, reply):
    daemon = FakeDaemon(tmp_path / "d.sock", reply)
    b = sliced_bundle(tmp_path)
    try:
        out, passed = run_front(bindir, ["create", "--bundle", str(b), "c3"], tmp_path,
                                env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert passed is None and b"flexai-runtime-py" in out.stderr  # Python redoes it and says why
    assert json.loads((b / "config.json").read_text()) == SLICED


def _fake_python(bindir, tmp_path) -> Path:
    """A flexai-runtime-py that records its argv and the refusal handed to it."""
    record = tmp_path / "py.txt"
    py = bindir / "flexai-runtime-py"
    py.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" "${{FLEXAI_PREPARE_REFUSED-unset}}" > {record}\n')
    py.chmod(0o755)
    return record


@pytest.mark.parametrize("reply, handed", [
    # a refusal goes to Python with it, so that flexaid is not asked (and does not log) twice
    (b'{"ok":false,"error":"the slice asks 20.00 GiB of memory and can never fit on this host"}\n',
     {"container_id": "c6", "reply": {"ok": False, "error": "the slice asks 20.00 GiB of memory and can never "
                                                            "fit on this host"}}),
    # flexaid's accept-time refusals are written by json.dumps, with a space
    (b'{"ok": false, "error": "permission denied: uid 7 (pid 9) is neither root nor in the socket\'s group"}\n',
     {"container_id": "c6", "reply": {"ok": False, "error": "permission denied: uid 7 (pid 9) is neither root "
                                                            "nor in the socket's group"}}),
    # warnings: Python redoes the start and shows them; nothing is handed over
    (b'{"ok":true,"warnings":["FLEXAI_FRACTON ... did you mean FLEXAI_FRACTION?"],"spec":null}\n', None),
    (b'{"ok":true,"warnings":["x"],"spec":{"ociVersion":"1.0.2"}}\n', None),
])
def test_a_refusal_is_handed_to_python_and_warnings_are_left_to_it(bindir, tmp_path, reply, handed):
    record = _fake_python(bindir, tmp_path)
    daemon = FakeDaemon(tmp_path / "d.sock", reply)
    b = sliced_bundle(tmp_path)
    try:
        out, passed = run_front(bindir, ["create", "--bundle", str(b), "c6"], tmp_path,
                                env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert out.returncode == 0 and passed is None, out.stderr
    argv, env = record.read_text().splitlines()
    assert argv == f"create --bundle {b} c6"
    assert (json.loads(env) if handed else env) == (handed or "unset")
    assert json.loads((b / "config.json").read_text()) == SLICED  # untouched: Python decides


@pytest.mark.parametrize("args, asks", [
    ([], True), (["--help"], True), (["-h"], True), (["--version"], True), (["-v"], True),
    (["--flexai-runtime=/usr/bin/crun", "--version"], True),
    (["--root", "/r", "--version"], False),  # not a question about flexai-runtime alone
    (["state", "--help"], False),  # runc's help of its subcommand
    (["help"], False),
])
def test_help_and_version_are_answered_by_flexai_not_the_real_runtime(bindir, tmp_path, args, asks):
    record = _fake_python(bindir, tmp_path)
    out, passed = run_front(bindir, args, tmp_path)
    if asks:
        assert passed is None and record.read_text().splitlines()[0] == " ".join(a for a in args if "flexai-runtime=" not in a)
    else:
        assert passed == [str(bindir / "fake-runc"), *args] and not record.exists()


def test_a_notice_is_said_and_a_chained_runtime_runs_instead(bindir, tmp_path):
    """flexaid's answer when no CDI spec has the card (flexai_hook/oci/driver.py): the line to say,
    and the vendor runtime to run (the runtime config's chain_without_cdi), before the spec."""
    vendor = bindir / "vendor-runtime"
    vendor.write_text('#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "$FAKE_ARGV"\n')
    vendor.chmod(0o755)
    notice = 'no CDI spec for nvidia.com/gpu in /etc/cdi: run `nvidia-ctk ...` (or set "chain_without_cdi")'
    edited = {**SLICED, "annotations": {"edited": "by flexaid"}}
    reply = json.dumps({"ok": True, "notice": notice, "runtime": "vendor-runtime", "spec": edited},
                       separators=(",", ":")).encode() + b"\n"
    daemon = FakeDaemon(tmp_path / "d.sock", reply)
    b = sliced_bundle(tmp_path)
    try:
        out, passed = run_front(bindir, ["create", "--bundle", str(b), "c6"], tmp_path,
                                env={"FLEXAI_SOCKET": str(tmp_path / "d.sock"), "PATH": f"{bindir}:/usr/bin:/bin"})
    finally:
        daemon.close()
    assert out.returncode == 0, out.stderr
    assert out.stderr.decode().splitlines() == [f"flexai: {notice}"]
    assert passed == [str(vendor), "create", "--bundle", str(b), "c6"]  # found on PATH, argv unchanged
    assert json.loads((b / "config.json").read_text()) == edited


@pytest.mark.parametrize("reply", [
    {"ok": True, "runtime": "no-such-runtime", "spec": SLICED},  # Python says it is not installed
    {"ok": True, "later": "a field this front door does not know", "spec": SLICED},
    {"ok": True, "notice": 7, "spec": SLICED},
])
def test_an_answer_it_cannot_follow_goes_to_python(bindir, tmp_path, reply):
    daemon = FakeDaemon(tmp_path / "d.sock", json.dumps(reply, separators=(",", ":")).encode() + b"\n")
    b = sliced_bundle(tmp_path)
    before = (b / "config.json").read_text()
    try:
        out, passed = run_front(bindir, ["create", "--bundle", str(b), "c7"], tmp_path,
                                env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert passed is None and b"flexai-runtime-py" in out.stderr
    assert (b / "config.json").read_text() == before


def test_no_daemon_goes_to_python(bindir, tmp_path):
    b = sliced_bundle(tmp_path)
    out, passed = run_front(bindir, ["create", "--bundle", str(b), "c4"], tmp_path)
    assert passed is None and b"flexai-runtime-py" in out.stderr


def test_a_failed_start_releases_the_slice(bindir, tmp_path):
    (bindir / "fake-runc").write_text("#!/bin/sh\necho no such image >&2\nexit 3\n")
    reply = json.dumps({"ok": True, "spec": SLICED}, separators=(",", ":")).encode() + b"\n"
    daemon = FakeDaemon(tmp_path / "d.sock", reply, b'{"ok":true,"released":true}\n')
    b = sliced_bundle(tmp_path)
    try:
        out, _ = run_front(bindir, ["create", "--bundle", str(b), "c5"], tmp_path,
                           env={"FLEXAI_SOCKET": str(tmp_path / "d.sock")})
    finally:
        daemon.close()
    assert out.returncode == 3 and b"no such image" in out.stderr
    assert [json.loads(x)["op"] for x in daemon.received] == ["prepare", "release"]
    assert json.loads(daemon.received[1]) == {"op": "release", "container_id": "c5"}


def test_sliced_container_through_runc_with_no_python_installed(tmp_path, built, runc, make_daemon, make_bundle):
    """A real flexaid and runc: the C front doors alone (no flexai-runtime-py/-hook-py beside
    them) start a sliced container, which sees its slice, and poststop releases it."""
    d = tmp_path / "cbin"
    d.mkdir()
    for name in ("flexai-runtime", "flexai-hook"):
        shutil.copy2(built / name, d / name)
    daemon = make_daemon(memories=("16GiB",))
    bundle = make_bundle(["sh", "-c", "cat /run/flexai/slice.conf"], env=["FLEXAI_FRACTION=0.25"])
    out = subprocess.run([str(d / "flexai-runtime"), "--root", str(runc.root), "run", "--bundle", str(bundle), "np1"],
                         env={"PATH": "/usr/bin:/bin", "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary,
                              "FLEXAI_RUNTIME_CONFIG": "/nonexistent"},
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr + daemon.log().encode()
    assert f"memory_limit={4 << 30}".encode() in out.stdout
    assert daemon.slices() == []  # released by the C poststop hook
