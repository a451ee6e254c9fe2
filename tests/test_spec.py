"""OCI spec edits as pure functions: what a slice adds, idempotence, unknown fields kept."""

import copy

from flexai_hook.oci import spec as spec_mod
from flexai_hook.oci.bundle import minimal_spec
from flexai_hook.reservation import Reservation

RES = Reservation(
    container_id="c1", slice_id="0123456789ab", card_index=1, card_uuid="GPU-1111",
    card_name="sim", card_memory=16 << 30, memory_bytes=4 << 30, compute=25, priority="normal",
    device_paths=("/dev/flexai-sim1",), slice_dir="/run/flexai/slices/0123456789ab",
)
NODE = spec_mod.DeviceNode(path="/dev/flexai-sim1", type="c", major=1, minor=3)
HOOK = spec_mod.Hook(path="/usr/local/bin/flexai-hook", args=("flexai-hook", "poststop"),
                     env=("FLEXAI_SOCKET=/tmp/s",))


def edited(spec=None):
    spec = spec if spec is not None else minimal_spec(["sh"], env=["FLEXAI_FRACTION=0.25"])
    return spec_mod.apply(spec, spec_mod.injection_for(RES, (NODE,), HOOK))


def test_device_node_in_devices_and_cgroup_rules():
    out = edited()
    assert out["linux"]["devices"] == [
        {"path": "/dev/flexai-sim1", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 0, "gid": 0}
    ]
    rules = out["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}  # the deny-all stays first
    assert rules[-1] == {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}


def test_slice_file_mounted_read_only():
    mount = [m for m in edited()["mounts"] if m["destination"] == spec_mod.SLICE_FILE_IN_CONTAINER]
    assert mount == [{
        "destination": "/run/flexai/slice.conf", "type": "bind",
        "source": "/run/flexai/slices/0123456789ab/slice.conf",
        "options": ["rbind", "nosuid", "nodev", "ro"],
    }]


def test_env_describes_the_slice_and_keeps_the_request():
    env = edited()["process"]["env"]
    assert "FLEXAI_FRACTION=0.25" in env
    assert "FLEXAI_SLICE_ID=0123456789ab" in env
    assert "FLEXAI_MEMORY_LIMIT=4294967296" in env
    assert "FLEXAI_COMPUTE_LIMIT=25" in env
    assert "FLEXAI_DEVICE_UUID=GPU-1111" in env


def test_poststop_hook_appended_after_existing_hooks():
    spec = minimal_spec(["sh"])
    spec["hooks"] = {"poststop": [{"path": "/bin/other"}], "prestart": [{"path": "/bin/p"}]}
    hooks = edited(spec)["hooks"]
    assert hooks["prestart"] == [{"path": "/bin/p"}]
    assert hooks["poststop"] == [
        {"path": "/bin/other"},
        {"path": "/usr/local/bin/flexai-hook", "args": ["flexai-hook", "poststop"],
         "env": ["FLEXAI_SOCKET=/tmp/s"], "timeout": 30},
    ]


def test_applying_twice_equals_applying_once():
    once = edited()
    assert edited(once) == once


def test_a_bundle_run_again_for_another_slice_keeps_no_board_mount_of_the_first():
    """Each slice's board slot is mounted at a path that names it: a bundle run again (a new
    container, a new slice) must not keep the first slice's slot, whose file is gone."""
    from flexai_hook.record import replace

    first = edited()
    other = replace(RES, container_id="c2", slice_id="fedcba987654")
    again = spec_mod.apply(first, spec_mod.injection_for(other, (NODE,), HOOK))
    fresh = spec_mod.apply(minimal_spec(["sh"], env=["FLEXAI_FRACTION=0.25"]),
                           spec_mod.injection_for(other, (NODE,), HOOK))
    boards = lambda s: sorted(m["destination"] for m in s["mounts"] if m["destination"].startswith("/run/flexai/boards/"))
    assert boards(again) == boards(fresh) and len(boards(again)) == 2
    assert boards(again) != boards(first)


def test_unknown_fields_survive_and_input_is_not_modified():
    spec = minimal_spec(["sh"])
    spec["x-vendor"] = {"keep": [1, 2.5, None]}
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO", "future": True}
    before = copy.deepcopy(spec)
    out = edited(spec)
    assert spec == before
    assert out["x-vendor"] == {"keep": [1, 2.5, None]}
    assert out["linux"]["seccomp"] == before["linux"]["seccomp"]


def test_a_spec_without_linux_or_mounts_gets_them():
    out = edited({"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "root": {"path": "rootfs"}})
    assert out["linux"]["devices"][0]["path"] == "/dev/flexai-sim1"
    assert out["mounts"][0]["destination"] == "/run/flexai/slice.conf"
