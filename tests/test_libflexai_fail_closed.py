"""libflexai inside a sliced container trusts only its read-only inputs at their fixed paths,
and fails closed when one of them is missing or damaged (docs/security.md).

Each case runs the C client in a private mount namespace (`unshare -m`) with a tmpfs over
/run, so /run/flexai/slice.conf, limits and region exist only there: the host's /run/flexai
is never touched. The simulated 16 GiB card comes from the environment as in the other
libflexai tests.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from conftest import GIB
from libflexai_support import MIB, client, libs, sim  # noqa: F401

from flexai_hook.devices import region
from flexai_hook.daemon import writer
from flexai_hook.reservation import Reservation


def in_container(libs, sim, client, setup: str, *args: str, **env_extra: str) -> subprocess.CompletedProcess:  # noqa: F811
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is missing")
    env = sim.env(libs)
    env.pop("FLEXAI_SLICE_FILE")  # the fixed path applies in the namespace
    env.update(env_extra)
    script = (f"mount -t tmpfs flexai-test /run && mkdir -p /run/flexai && {setup} && "
              f"exec {shlex.join([client, *args])}")
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if out.returncode != 0 and "unshare failed" in out.stderr:
        pytest.skip(f"cannot make a mount namespace here: {out.stderr.strip()}")
    return out


@pytest.fixture
def slice_files(tmp_path, sim):  # noqa: F811
    """A 1 GiB slice on the simulator's first card, as flexaid writes it."""
    res = Reservation(container_id="c1", slice_id="0123456789ab", card_index=0, card_uuid=sim.uuids[0],
                      card_name="sim-0", card_memory=16 * GIB, memory_bytes=GIB, compute=100,
                      priority="normal", device_paths=(), slice_dir=str(tmp_path / "slice"))
    (tmp_path / "slice").mkdir()
    for name, content, mode, size in writer.slice_files(res):
        path = tmp_path / "slice" / name
        path.write_bytes(content)
        if size > len(content):
            with open(path, "r+b") as f:
                f.truncate(size)
    return tmp_path / "slice"


def copy_in(slice_dir, *names: str) -> str:
    return " && ".join(f"cp {slice_dir}/{n} /run/flexai/{n}" for n in names)


def test_whole_slice_is_enforced_and_the_environment_ignored(libs, sim, client, slice_files):  # noqa: F811
    out = in_container(libs, sim, client, copy_in(slice_files, "slice.conf", "limits", "region"),
                       "alloc", "mem", str(700 * MIB), "alloc", "mem", str(700 * MIB),
                       FLEXAI_MEMORY="16GiB", FLEXAI_REGION="/dev/shm/mine", FLEXAI_SLICE_FILE="/nonexistent")
    assert out.stdout.splitlines() == ["ok 0", "oom"], out.stdout + out.stderr


@pytest.mark.parametrize("setup, names", [
    ("limits missing", ("slice.conf", "region")),
    ("region missing", ("slice.conf", "limits")),
])
def test_a_missing_input_fails_closed(libs, sim, client, slice_files, setup, names):  # noqa: F811
    out = in_container(libs, sim, client, copy_in(slice_files, *names), "alloc", "mem", str(MIB), "launch", "1")
    assert out.stdout.splitlines()[:2] == ["oom", "err 800"], (setup, out.stdout, out.stderr)
    assert "fail closed" in out.stderr and out.stderr.count("fail closed") == 1, out.stderr


def test_a_damaged_limits_file_fails_closed(libs, sim, client, slice_files):  # noqa: F811
    setup = copy_in(slice_files, "slice.conf", "limits", "region") + \
        " && printf 'XXXXXXXX' | dd of=/run/flexai/limits bs=1 seek=0 conv=notrunc 2>/dev/null"
    out = in_container(libs, sim, client, setup, "alloc", "mem", str(MIB))
    assert out.stdout.splitlines() == ["oom"], out.stdout + out.stderr
    assert "/run/flexai/limits is not a limits file of this version" in out.stderr


def test_an_unreadable_slice_file_fails_closed(libs, sim, client, slice_files):  # noqa: F811
    setup = "mkdir /run/flexai/slice.conf && " + copy_in(slice_files, "limits", "region")
    out = in_container(libs, sim, client, setup, "alloc", "mem", str(MIB))
    assert out.stdout.splitlines() == ["oom"], out.stdout + out.stderr
    assert "/run/flexai/slice.conf is unreadable" in out.stderr


def test_the_limits_file_is_what_counts_not_the_regions_copy(libs, sim, client, slice_files):  # noqa: F811
    # the region's own header says 16 GiB (as a tenant could write it); the limits file 1 GiB
    region.create_region(slice_files / "region", {"memory_limit": 16 * GIB})
    out = in_container(libs, sim, client, copy_in(slice_files, "slice.conf", "limits", "region"),
                       "alloc", "mem", str(2 * GIB))
    assert out.stdout.splitlines() == ["oom"], out.stdout + out.stderr
