"""The install and test scripts: the installed tools never import the folder they are run
from, and the test command keeps to its own prefix, never the user's running install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flexai_hook.daemon import writer

REPO = Path(__file__).resolve().parent.parent
INSTALL_SH = REPO / "packaging" / "install.sh"
RUN_SH = REPO / "tests" / "run.sh"


@pytest.fixture
def broken_checkout(tmp_path, monkeypatch) -> Path:
    """A working directory holding a `flexai_hook` that fails on import, as an unbuilt
    checkout fails the installed tools: whatever imports it is the bug."""
    folder = tmp_path / "checkout"
    (folder / "flexai_hook").mkdir(parents=True)
    (folder / "flexai_hook" / "__init__.py").write_text(
        "raise ImportError('imported the flexai_hook of the working directory')\n")
    for module in ("daemon/writer.py", "install/launchers.py"):
        (folder / "flexai_hook" / module).parent.mkdir(exist_ok=True)
        (folder / "flexai_hook" / module).write_text("raise SystemExit(9)\n")
    monkeypatch.chdir(folder)
    return folder


def test_the_writer_child_imports_its_parents_package_not_the_working_directorys(tmp_path, broken_checkout):
    (tmp_path / "state").mkdir()
    w = writer.Writer()
    try:
        w.send(writer.Plan(slices=[], ledger_path=str(tmp_path / "state" / "ledger.json"),
                           journal_path=str(tmp_path / "state" / "ledger.journal"), batch=1,
                           ledger_lines=[("c1", '{"container_id": "c1"}')]))
        assert w.receive() == writer.Outcome()
    finally:
        w.stop()
    assert (tmp_path / "state" / "ledger.json").exists()


def test_flexaid_started_from_a_checkout_reserves(make_daemon, broken_checkout):
    """`bash packaging/install.sh --demo` from the checkout starts flexaid there."""
    daemon = make_daemon()  # started with the broken checkout as its working directory
    reply = daemon.call({"op": "reserve", "container_id": "c1", "request": {"fraction": 30}})
    assert reply["ok"] is True, reply
    assert daemon.call({"op": "release", "container_id": "c1"})["released"] is True


def _installed_package_parent() -> str:
    """Where this interpreter's installed flexai_hook lives (run from /, no PYTHON* env)."""
    out = subprocess.run([sys.executable, "-I", "-c", "import flexai_hook, os; "
                          "print(os.path.dirname(os.path.dirname(os.path.abspath(flexai_hook.__file__))))"],
                         cwd="/", capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_install_sh_runs_the_installed_python_isolated_and_from_root():
    text = INSTALL_SH.read_text()
    calls = [line for line in text.splitlines() if re.search(r'venv/bin/python"? .*-m flexai_hook\.', line)]
    assert calls, "install.sh no longer runs flexai_hook modules?"
    for line in calls:
        assert re.search(r'venv/bin/python"? -I -m flexai_hook\.', line), line
    # and every command after the checkout's path is known runs from /
    cd_root = re.search(r"^cd /$", text, re.M)
    assert cd_root and cd_root.start() < text.index(calls[0])


def test_the_launchers_as_install_sh_writes_them_point_at_the_installed_package(tmp_path, broken_checkout):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = subprocess.run([sys.executable, "-I", "-m", "flexai_hook.install.launchers", str(bin_dir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    script = (bin_dir / "flexai-runtime-py").read_text()
    assert f"sys.path.insert(0, {_installed_package_parent()!r})" in script
    assert str(broken_checkout) not in script


def _fake_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of tests/run.sh whose install.sh only records how it was called."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "packaging").mkdir()
    shutil.copy(RUN_SH, repo / "tests" / "run.sh")
    record = tmp_path / "install-called"
    (repo / "packaging" / "install.sh").write_text(
        f'echo "prefix=${{FLEXAI_PREFIX:-}} args=$*" > {record}\nexit 3\n')
    return repo, record


def _run_sh(repo: Path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "FLEXAI_PREFIX"}
    return subprocess.run(["bash", str(repo / "tests" / "run.sh")], env={**base, **env},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_run_sh_uses_its_own_prefix_by_default_and_as_told(tmp_path):
    repo, record = _fake_repo(tmp_path)
    out = _run_sh(repo)
    assert out.returncode == 3, out.stderr
    assert record.read_text().split() == ["prefix=/opt/flexai-test", "args=--test", "--deps-only"]
    out = _run_sh(repo, FLEXAI_PREFIX=str(tmp_path / "p"))
    assert out.returncode == 3, out.stderr
    assert record.read_text().split()[0] == f"prefix={tmp_path / 'p'}"


def test_run_sh_refuses_the_install_prefix(tmp_path):
    repo, record = _fake_repo(tmp_path)
    for prefix in ("/opt/flexai", "/opt/flexai/", "/opt/../opt/flexai"):
        out = _run_sh(repo, FLEXAI_PREFIX=prefix)
        assert out.returncode == 2 and "is flexai's install" in out.stderr, (prefix, out)
        assert "\n" not in out.stderr.strip()
    assert not record.exists()


def test_ci_runs_the_readme_test_command():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[-1] == "bash tests/run.sh"
    assert not any("FLEXAI_PREFIX" in line for line in commands)
    assert "bash tests/run.sh" in (REPO / "README.md").read_text()


def test_install_sh_makes_the_venv_with_the_system_python():
    text = INSTALL_SH.read_text()
    assert re.search(r"^python=\$\{FLEXAI_PYTHON:-/usr/bin/python3\}$", text, re.M)
    assert "command -v python3" not in text


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
def test_install_sh_test_mode_makes_a_venv_every_user_can_run_and_touches_no_install():
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3 (install.sh installs python3 and python3-venv)")
    installed = {p: os.path.realpath(p) for p in ("/usr/local/bin/flexai", "/usr/local/bin/flexaid")}
    top = Path(tempfile.mkdtemp(prefix="flexai-test-prefix-", dir="/tmp"))  # pytest's tmp is 0700
    try:
        _install_test_mode(top / "prefix", installed)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _install_test_mode(prefix: Path, installed: dict) -> None:
    prefix.parent.chmod(0o755)
    out = subprocess.run(["bash", str(INSTALL_SH), "--test", "--deps-only"], cwd=REPO,
                         env={**os.environ, "FLEXAI_PREFIX": str(prefix)}, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    cfg = dict(line.split(" = ", 1) for line in (prefix / "venv" / "pyvenv.cfg").read_text().splitlines()
               if " = " in line)
    assert cfg["home"] == "/usr/bin" and not cfg["executable"].startswith("/root")
    assert {p: os.path.realpath(p) for p in installed} == installed
    runuser = shutil.which("runuser")
    if runuser is None or not os.access(str(REPO), os.R_OK):
        return
    run = subprocess.run([runuser, "-u", "nobody", "--", str(prefix / "venv" / "bin" / "flexai"), "--help"],
                         cwd="/", capture_output=True, text=True, timeout=60)
    if "Permission denied" in run.stderr and "flexai_hook" in run.stderr:
        pytest.skip("the checkout is not readable by nobody")
    assert run.returncode == 0 and "Usage: flexai" in run.stdout, run.stderr
