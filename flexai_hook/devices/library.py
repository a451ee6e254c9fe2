"""Where the built preload library is: `flexai library-path` and the runtime's mount source."""

from __future__ import annotations

import os

LIBRARY_NAME = "libflexai.so"
# Where the runtime mounts it inside sliced containers, and what /etc/ld.so.preload names.
LIBRARY_IN_CONTAINER = "/usr/lib/flexai/libflexai.so"


# The slice's region and the simulator directory inside the container (libflexai's and the
# simulated drivers' defaults, so processes with an emptied environment still find them).
REGION_IN_CONTAINER = "/run/flexai/region"
LIMITS_IN_CONTAINER = "/run/flexai/limits"  # read-only: what libflexai enforces (struct flexai_limits)
SIM_DIR_IN_CONTAINER = "/run/flexai/sim"
SIM_LIBRARIES = ("libcuda.so.1", "libnvidia-ml.so.1", "libascendcl.so")


class LibraryMissing(FileNotFoundError):
    pass


def library_dir() -> str:
    """flexai_hook/lib/ of this package: the wheel's copy, or the in-place build of an
    editable install (`python -m flexai_hook.install.cbuild` writes there)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "lib")


def _built(path: str) -> str:
    if not os.path.isfile(path):
        raise LibraryMissing(
            f"{path} is not built: run `python -m flexai_hook.install.cbuild` (or reinstall flexai, "
            "which builds it)"
        )
    return path


def library_path() -> str:
    """Absolute path of the built libflexai.so; LibraryMissing (with the fix) if not built."""
    return _built(os.path.join(library_dir(), LIBRARY_NAME))


def preload_text() -> str:
    """The container's /etc/ld.so.preload."""
    return LIBRARY_IN_CONTAINER + "\n"


def sim_library_path(name: str) -> str:
    """A built simulated driver library (flexai_hook/lib/sim/)."""
    return _built(os.path.join(library_dir(), "sim", name))


def driver_dir_in_container() -> str:
    """Where the NVIDIA container toolkit puts the driver libraries: /usr/lib/<multiarch>
    (Debian's multiarch triplet; x86_64-linux-gnu, aarch64-linux-gnu)."""
    return f"/usr/lib/{os.uname().machine}-linux-gnu"


def sim_dir_for(slices_dir: str) -> str:
    """The host's simulator directory (cards.conf, shared state) beside flexaid's slices dir:
    /run/flexai/sim for the default /run/flexai/slices, the simulated drivers' own default."""
    return os.path.join(os.path.dirname(os.path.normpath(slices_dir)), "sim")
