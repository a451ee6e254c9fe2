"""flexai.io/compute-mode / FLEXAI_COMPUTE_MODE: the request field, the reservation, the region."""

from __future__ import annotations

import pytest

from flexai_hook.daemon import ledger as ledger_mod
from flexai_hook.devices import region
from flexai_hook import validation
from flexai_hook.devices.inventory import Card
from flexai_hook.request import Request, RequestError, from_container


@pytest.mark.parametrize(
    "env, annotations, expected",
    [
        (["FLEXAI_FRACTION=0.3"], {}, "work-conserving"),
        (["FLEXAI_FRACTION=0.3", "FLEXAI_COMPUTE_MODE=hard"], {}, "hard"),
        (["FLEXAI_FRACTION=0.3", "FLEXAI_COMPUTE_MODE= hard "], {}, "hard"),
        (["FLEXAI_FRACTION=0.3", "FLEXAI_COMPUTE_MODE=work-conserving"], {}, "work-conserving"),
        (["FLEXAI_FRACTION=0.3"], {"flexai.io/compute-mode": "hard"}, "hard"),
        (["FLEXAI_COMPUTE_MODE=hard"], {"flexai.io/compute-mode": "work-conserving",
                                         "flexai.io/fraction": "0.2"}, "work-conserving"),
    ],
)
def test_compute_mode_from_env_and_annotations(env, annotations, expected):
    request = from_container(env, annotations)
    assert request.compute_mode == expected
    assert Request.from_json(request.to_json()) == request
    assert validation.problem("protocol.schema.json", request.to_json(), "request") is None


@pytest.mark.parametrize(
    "env, annotations, source",
    [
        (["FLEXAI_FRACTION=0.3", "FLEXAI_COMPUTE_MODE=strict"], {}, "FLEXAI_COMPUTE_MODE"),
        (["FLEXAI_FRACTION=0.3", "FLEXAI_COMPUTE_MODE="], {}, "FLEXAI_COMPUTE_MODE"),
        (["FLEXAI_FRACTION=0.3"], {"flexai.io/compute-mode": "HARD"}, "flexai.io/compute-mode"),
    ],
)
def test_bad_compute_mode_is_one_line_naming_the_field(env, annotations, source):
    with pytest.raises(RequestError) as err:
        from_container(env, annotations)
    message = str(err.value)
    assert message.startswith("invalid ") and f"{source}=" in message and "work-conserving, hard" in message
    assert "\n" not in message


def test_hard_mode_reaches_the_reservation_slice_file_and_region(tmp_path):
    card = Card(index=0, uuid="GPU-1", name="sim", memory=16 << 30, device_paths=(), backend="simulated")
    request = from_container(["FLEXAI_FRACTION=0.3", "FLEXAI_COMPUTE_MODE=hard"], {})
    _, res = ledger_mod.reserve(ledger_mod.Ledger(), [card], "c1", request, policy="best-fit",
                                  slice_root=str(tmp_path), now=0.0)
    assert res.compute_mode == "hard" and "compute_mode=hard" in res.slice_conf()
    assert validation.problem("protocol.schema.json", res.to_json(), "reservation") is None
    path = region.create_region(tmp_path / "region", {"compute_limit": 30, "compute_mode": res.compute_mode})
    assert region.read_region(path).to_json()["compute_mode"] == "hard"
