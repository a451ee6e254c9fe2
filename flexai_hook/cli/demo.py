"""`flexai demo`: one sliced busybox container through flexai-runtime and runc, narrated."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import click

from flexai_hook import client
from flexai_hook.oci import bundle

from . import status_view


class DemoError(RuntimeError):
    pass


def _runtime_binary() -> str:
    here = Path(os.path.abspath(os.sys.argv[0])).parent / "flexai-runtime"
    found = str(here) if os.access(here, os.X_OK) else shutil.which("flexai-runtime")
    if not found:
        raise DemoError("flexai-runtime is not installed (run packaging/install.sh)")
    return found


def _smi() -> Path | None:
    """The built flexai-smi, if any (flexai_hook/lib/bin)."""
    path = Path(__file__).resolve().parents[1] / "lib" / "bin" / "flexai-smi"
    return path if os.access(path, os.X_OK) else None


def _status(socket: str) -> dict:
    try:
        return client.call({"op": "status"}, socket)["status"]
    except (client.DaemonUnavailable, client.DaemonRefused) as exc:
        raise DemoError(str(exc)) from None


def run(fraction: str, seconds: int, runtime_root: str, socket: str) -> int:
    runtime = _runtime_binary()
    _status(socket)  # fail early, with the daemon's own message, if it is not there
    container_id = f"flexai-demo-{os.getpid()}"
    smi = _smi()
    view = (
        # What CUDA programs see: libflexai answers the driver calls. Ask for more than the
        # slice holds, to show where it stops.
        "echo '[container] what a CUDA program sees (flexai-smi):'; "
        "flexai-smi --alloc \"$(awk -F= '$1==\"memory_limit\"{printf \"%dMiB\", $2/1048576+1024}' "
        "/run/flexai/slice.conf)\" || true; "
        if smi else "echo '[container] (flexai-smi is not built: no CUDA view)'; "
    )
    script = (
        "echo '[container] started; my slice file says:'; cat /run/flexai/slice.conf; "
        "echo '[container] my card:'; ls -l /dev | grep -e flexai -e nvidia; "
        f"env | grep ^FLEXAI_ | sort; {view}sleep {int(seconds)}; echo '[container] done'"
    )
    with tempfile.TemporaryDirectory(prefix="flexai-demo-") as tmp:
        bundle.make_bundle(Path(tmp), ["sh", "-c", script], env=[f"FLEXAI_FRACTION={fraction}"])
        if smi and not bundle.add_host_programs(Path(tmp), [smi]):
            click.echo("(this host's glibc layout is not Debian-style x86_64: no CUDA view in the demo)")
        cmd = [runtime, "--root", runtime_root, "run", "--bundle", tmp, container_id]
        env = dict(os.environ, FLEXAI_SOCKET=socket)
        click.echo(f"$ FLEXAI_FRACTION={fraction} {' '.join(cmd)}")
        proc = subprocess.Popen(cmd, env=env)
        try:
            deadline = time.monotonic() + 10
            shown = False
            while proc.poll() is None and time.monotonic() < deadline and not shown:
                status = _status(socket)
                if any(s["container_id"] == container_id for c in status["cards"] for s in c["slices"]):
                    time.sleep(0.5)  # let the container print its view first
                    click.echo("\n$ flexai status   # while the container runs")
                    click.echo(status_view.render(status, socket) + "\n")
                    shown = True
                else:
                    time.sleep(0.1)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    status = _status(socket)
    click.echo("\n$ flexai status   # after the container exited")
    click.echo(status_view.render(status, socket))
    held = [s for c in status["cards"] for s in c["slices"] if s["container_id"] == container_id]
    if code != 0:
        click.echo(f"\nthe demo container exited with status {code}", err=True)
        return code
    if not shown:
        click.echo("\nthe reservation never showed in flexai status", err=True)
        return 1
    if held:
        click.echo("\nthe slice was not released after the container exited", err=True)
        return 1
    click.echo("\ndemo ok: the container got its slice, and the slice was released when it exited")
    return 0
