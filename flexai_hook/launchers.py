"""Fast launchers for the commands that run on every container start.

pip's console-script wrappers start Python with `site`, which (with .pth files such as an
editable install's finder) costs 10-20 ms before our first line runs. flexai-runtime and
flexai-hook run on every container start, so `install()` replaces their wrappers with ones
that start Python with -I -S (no site, no user paths, no PYTHON* environment) and put just
this package's directory on sys.path.

    python -m flexai_hook.launchers [BIN_DIR]     # default: the running interpreter's bin dir
"""

from __future__ import annotations

import os
import sys

FAST = {"flexai-runtime": "flexai_hook.runtime", "flexai-hook": "flexai_hook.hook"}

TEMPLATE = """#!{python} -IS
# flexai fast launcher (written by python -m flexai_hook.launchers): no site, no PYTHON* env.
import sys
sys.path.insert(0, {path!r})
from {module} import main
sys.exit(main())
"""


def render(python: str, package_parent: str, module: str) -> str:
    return TEMPLATE.format(python=python, path=package_parent, module=module)


def install(bin_dir: str) -> list[str]:
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = os.path.join(bin_dir, "python")
    if not os.access(python, os.X_OK):
        python = sys.executable
    written = []
    for name, module in FAST.items():
        path = os.path.join(bin_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(render(python, package_parent, module))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(sys.executable)
    for p in install(target):
        print(f"wrote fast launcher {p}")
