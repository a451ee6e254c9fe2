"""Where the built preload library is: `flexai library-path` and the runtime's mount source."""

from __future__ import annotations

import os
import platform
import sysconfig
from pathlib import Path

LIBRARY_NAME = "libflexai.so"
# Where the runtime mounts it inside sliced containers, and what /etc/ld.so.preload names.
LIBRARY_IN_CONTAINER = "/usr/lib/flexai/libflexai.so"


# The slice's region and the simulator directory inside the container (libflexai's and the
# simulated drivers' defaults, so processes with an emptied environment still find them).
REGION_IN_CONTAINER = "/run/flexai/region"
SIM_DIR_IN_CONTAINER = "/run/flexai/sim"
SIM_LIBRARIES = ("libcuda.so.1", "libnvidia-ml.so.1", "libascendcl.so")


class LibraryMissing(FileNotFoundError):
    pass


def library_dir() -> Path:
    """flexai_hook/lib/ of this package: the wheel's copy, or the in-place build of an
    editable install (`python -m flexai_hook.cbuild` writes there)."""
    return Path(__file__).resolve().parent / "lib"


def library_path() -> Path:
    """Absolute path of the built libflexai.so; LibraryMissing (with the fix) if not built."""
    path = library_dir() / LIBRARY_NAME
    if not path.is_file():
        raise LibraryMissing(
            f"{path} is not built: run `python -m flexai_hook.cbuild` (or reinstall flexai, "
            "which builds it)"
        )
    return path


def preload_text() -> str:
    """The container's /etc/ld.so.preload."""
    return LIBRARY_IN_CONTAINER + "\n"


def sim_library_path(name: str) -> Path:
    """A built simulated driver library (flexai_hook/lib/sim/)."""
    path = library_dir() / "sim" / name
    if not path.is_file():
        raise LibraryMissing(f"{path} is not built: run `python -m flexai_hook.cbuild`")
    return path


def driver_dir_in_container() -> str:
    """Where the NVIDIA container toolkit puts the driver libraries: /usr/lib/<multiarch>."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    return f"/usr/lib/{multiarch}"


def sim_dir_for(slices_dir: str) -> str:
    """The host's simulator directory (cards.conf, shared state) beside flexaid's slices dir:
    /run/flexai/sim for the default /run/flexai/slices, the simulated drivers' own default."""
    return os.path.join(os.path.dirname(os.path.normpath(slices_dir)), "sim")
