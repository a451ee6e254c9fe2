"""Fast launchers for the commands that run on every container start.

flexai-runtime and flexai-hook run several times per container start, so `install()` puts
two things in the bin directory for each:

- `<name>`: the C front door built from libflexai/launch/ (flexai_hook/lib/bin/), which does
  the common cases without Python (runtime: every call that is not create/run of a config
  mentioning flexai goes straight to the real runtime; hook: poststop's release);
- `<name>-py`: the Python implementation, started with -I -S (pip's console-script wrappers
  load `site` and .pth files such as an editable install's finder: 10-20 ms) and just this
  package's directory on sys.path. The front door execs it for everything else.

Without a built front door, the Python launcher is installed under the plain name as well.

    python -m flexai_hook.install.launchers [BIN_DIR]     # default: the running interpreter's bin dir
"""

from __future__ import annotations

import os
import sys

FAST = {"flexai-runtime": "flexai_hook.oci.runtime", "flexai-hook": "flexai_hook.oci.hook"}

TEMPLATE = """#!{python} -IS
# flexai fast launcher (written by python -m flexai_hook.install.launchers): no site, no PYTHON* env.
import sys
sys.path.insert(0, {path!r})
from {module} import main
sys.exit(main())
"""


def render(python: str, package_parent: str, module: str) -> str:
    return TEMPLATE.format(python=python, path=package_parent, module=module)


def install(bin_dir: str) -> list[str]:
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package_parent = os.path.dirname(package_dir)
    python = os.path.join(bin_dir, "python")
    if not os.access(python, os.X_OK):
        python = sys.executable
    written = []
    for name, module in FAST.items():
        script = render(python, package_parent, module).encode()
        front = os.path.join(package_dir, "lib", "bin", name)
        try:
            with open(front, "rb") as f:
                program = f.read()
        except FileNotFoundError:
            program = script
        for path, content in ((os.path.join(bin_dir, name + "-py"), script),
                              (os.path.join(bin_dir, name), program)):
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(content)
            os.chmod(tmp, 0o755)
            os.replace(tmp, path)
            written.append(path)
    smi = os.path.join(package_dir, "lib", "bin", "flexai-smi")
    if os.path.exists(smi):  # the slice as programs see it; not on the start path, just a tool
        path = os.path.join(bin_dir, "flexai-smi")
        with open(smi, "rb") as src, open(path + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
        written.append(path)
    return written


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(sys.executable)
    for p in install(target):
        print(f"wrote fast launcher {p}")
