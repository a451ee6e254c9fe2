"""MPS mode: the spec edits that hand a slice's share to NVIDIA MPS (pure functions)."""

from __future__ import annotations

import pytest

from flexai_hook.oci import mps
from flexai_hook.oci import spec as spec_mod
from flexai_hook.oci.bundle import minimal_spec
from flexai_hook.reservation import Reservation

GIB = 1 << 30


def res(**over) -> Reservation:
    values = dict(
        container_id="c1", slice_id="0123456789ab", card_index=1, card_uuid="GPU-1111-2222",
        card_name="sim", card_memory=16 * GIB, memory_bytes=4 * GIB, compute=25,
        priority="normal", device_paths=("/dev/nvidia1",), slice_dir="/run/flexai/slices/x",
    )
    values.update(over)
    return Reservation(**values)


def env_of(inj) -> dict:
    return dict(inj.env)


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({}, None),
        ({"compute_backend": "flexai"}, None),
        ({"compute_backend": ""}, None),
        ({"compute_backend": "mps"}, mps.MpsConfig()),
        ({"compute_backend": "mps", "mps_pipe_directory": "/run/mps/"},
         mps.MpsConfig(pipe_directory="/run/mps")),
        ({"compute_backend": "mps", "mps_log_directory": "/var/log/mps"},
         mps.MpsConfig(log_directory="/var/log/mps")),
        ({"compute_backend": "mps", "mps_memory_limit": False}, mps.MpsConfig(memory_limit=False)),
    ],
)
def test_config_from_runtime_json(settings, expected):
    assert mps.mps_config(settings) == expected


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"compute_backend": "cuda"}, "compute_backend"),
        ({"compute_backend": "mps", "mps_pipe_directory": "relative"}, "mps_pipe_directory"),
        ({"compute_backend": "mps", "mps_log_directory": 3}, "mps_log_directory"),
        ({"compute_backend": "mps", "mps_memory_limit": "yes"}, "mps_memory_limit"),
    ],
)
def test_bad_config_names_the_key(settings, words):
    with pytest.raises(mps.MpsConfigError, match=words):
        mps.mps_config(settings)


@pytest.mark.parametrize(
    "over, expected",
    [
        ({}, "GPU-1111-2222=4096M"),
        ({"memory_bytes": 4 * GIB + 123}, "GPU-1111-2222=4096M"),  # rounded down to MiB
        ({"memory_bytes": 1000}, "GPU-1111-2222=1M"),  # never 0 (which would mean nothing)
        ({"card_uuid": ""}, "1=4096M"),  # index when the UUID is not known
        ({"memory_bytes": 1536 << 20}, "GPU-1111-2222=1536M"),
    ],
)
def test_pinned_device_memory_limit_format(over, expected):
    assert env_of(mps.injection(res(**over), mps.MpsConfig()))["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == expected


@pytest.mark.parametrize("compute", [1, 25, 30, 100])
def test_active_thread_percentage_is_the_share(compute):
    env = env_of(mps.injection(res(compute=compute), mps.MpsConfig()))
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == str(compute)


@pytest.mark.parametrize("compute", [0, 101, -5])
def test_share_outside_percent_is_refused(compute):
    with pytest.raises(mps.MpsConfigError, match="compute"):
        mps.injection(res(compute=compute), mps.MpsConfig())


@pytest.mark.parametrize("priority, value", [("low", "1"), ("normal", "0"), ("high", "0")])
def test_client_priority(priority, value):
    assert env_of(mps.injection(res(priority=priority), mps.MpsConfig()))["CUDA_MPS_CLIENT_PRIORITY"] == value


def test_library_is_told_not_to_throttle_and_dirs_are_mounted():
    inj = mps.injection(res(), mps.MpsConfig(pipe_directory="/run/mps", log_directory="/var/log/mps"))
    env = env_of(inj)
    assert env["FLEXAI_COMPUTE_BY"] == "mps"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/run/mps"
    assert env["CUDA_MPS_LOG_DIRECTORY"] == "/var/log/mps"
    assert spec_mod.Mount("/run/mps", "/run/mps", read_only=False) in inj.mounts
    assert spec_mod.Mount("/var/log/mps", "/var/log/mps", read_only=True) in inj.mounts


def test_memory_limit_can_be_left_to_libflexai():
    env = env_of(mps.injection(res(), mps.MpsConfig(memory_limit=False)))
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in env
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"


def test_merged_into_a_spec_replaces_and_keeps():
    base = spec_mod.Injection(
        mounts=(spec_mod.Mount("/run/flexai/slices/x/slice.conf", "/run/flexai/slice.conf"),),
        env=(("FLEXAI_COMPUTE_LIMIT", "25"), ("FLEXAI_COMPUTE_BY", "flexai")),
    )
    merged = mps.merge(base, mps.injection(res(), mps.MpsConfig()))
    env = dict(merged.env)
    assert env["FLEXAI_COMPUTE_BY"] == "mps" and env["FLEXAI_COMPUTE_LIMIT"] == "25"
    assert [n for n, _ in merged.env].count("FLEXAI_COMPUTE_BY") == 1
    out = spec_mod.apply(minimal_spec(["sh"], env=["A=1"]), merged)
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25" in out["process"]["env"]
    assert "A=1" in out["process"]["env"]
    pipe = [m for m in out["mounts"] if m["destination"] == "/tmp/nvidia-mps"]
    assert pipe and "rw" in pipe[0]["options"]
    # applying twice gives the same spec (idempotent like every other edit)
    assert spec_mod.apply(out, merged) == out


HOOK = spec_mod.Hook(path="/usr/local/bin/flexai-hook", args=("flexai-hook", "poststop"))


def test_runtime_config_selects_mps_in_the_spec_edits():
    r = res(slice_dir="/run/flexai/slices/abc")
    plain = dict(spec_mod.injection_for(r, (), HOOK, lib="/lib/libflexai.so").env)
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in plain and "FLEXAI_COMPUTE_BY" not in plain
    with_mps = spec_mod.injection_for(r, (), HOOK, lib="/lib/libflexai.so",
                                      settings={"runtime": "runc", "compute_backend": "mps"})
    env = dict(with_mps.env)
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25" and env["FLEXAI_COMPUTE_BY"] == "mps"
    assert env["FLEXAI_SLICE_ID"] == "0123456789ab"  # the slice's own edits stay
    flexai_only = spec_mod.injection_for(r, (), HOOK, lib="/lib/libflexai.so",
                                         settings={"compute_backend": "flexai"})
    assert "FLEXAI_COMPUTE_BY" not in dict(flexai_only.env)


def test_the_cards_board_is_read_only_but_the_slices_own_slot_and_limits_read_only():
    from flexai_hook.devices import board as board_mod

    r = res(slice_dir="/run/flexai/slices/abc")
    inj = spec_mod.injection_for(r, (), HOOK, lib="/lib/libflexai.so")
    card = f"/run/flexai/boards/{r.card_uuid.replace('/', '_')}"
    slot = f"{card}/{board_mod.slot_name(board_mod.slice_key(r.slice_id))}"
    # only the slice's own card's board: the directory read-only, then its own slot over it
    mounts = list(inj.mounts)
    assert spec_mod.Mount(card, card, read_only=True) in mounts
    assert spec_mod.Mount(slot, slot, read_only=False) in mounts
    assert mounts.index(spec_mod.Mount(card, card, read_only=True)) < mounts.index(
        spec_mod.Mount(slot, slot, read_only=False))
    assert [m for m in mounts if m.destination.startswith("/run/flexai/boards") and not m.read_only] == [
        spec_mod.Mount(slot, slot, read_only=False)]
    assert not any(m.destination == "/run/flexai/boards" for m in inj.mounts)
    assert spec_mod.Mount("/run/flexai/slices/abc/limits", "/run/flexai/limits", read_only=True) in inj.mounts
    assert ("FLEXAI_BOARD_DIR", "/run/flexai/boards") in inj.env
