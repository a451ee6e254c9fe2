"""Compiles the C libraries (libflexai/) as part of the package build; metadata is in
pyproject.toml. A regular install puts them in the wheel under flexai_hook/lib/; an editable
install builds them in the source tree, where flexai_hook.devices.library looks first."""
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flexai_hook.install import cbuild  # noqa: E402  (stdlib-only module, safe before install)


class BuildWithLibraries(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            out = cbuild.package_lib_dir()
        else:
            out = Path(self.build_lib) / "flexai_hook" / "lib"
        cbuild.build(out)


setup(cmdclass={"build_py": BuildWithLibraries})
