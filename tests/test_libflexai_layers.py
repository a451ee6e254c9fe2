"""libflexai's layers (docs/libflexai.md): the vendor-neutral core never calls a vendor front end.

Each C file of the library is compiled on its own and its object's symbols read with nm: a
core/ file may use only what core/ defines (and libc); a vendor folder may use the core, the
front door (route.c) and its own family's files. A core file that needs something of a vendor
gets it through the table the vendor registers (core/vendors.c, struct flexai_device_timer).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from flexai_hook.install import cbuild

ROOT = Path(__file__).resolve().parent.parent / "libflexai"

# folder -> the folders whose symbols it may use (its own is always allowed)
ALLOWED = {
    "core": set(),
    "route": {"core", "cuda", "nvml", "acl"},  # the front door routes to every vendor
    "cuda": {"core", "route", "nvml"},  # NVIDIA's driver-overhead accounting reads NVML
    "nvml": {"core", "route"},
    "acl": {"core", "route"},
}


def layer_of(source: Path, root: Path) -> str:
    rel = source.relative_to(root)
    return "route" if len(rel.parts) == 1 else rel.parts[0]


def symbols(obj: Path) -> tuple[set[str], set[str]]:
    """(defined global symbols, undefined symbols) of an object file."""
    out = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDBRVWC":
            defined.add(parts[2])
        elif len(parts) == 2 and parts[0] == "U":
            undefined.add(parts[1])
    return defined, undefined


def violations(objects: dict[Path, str]) -> list[str]:
    """Each use of a symbol that crosses a layer the wrong way, as 'file uses sym of layer'."""
    table = {obj: symbols(obj) for obj in objects}
    owner = {sym: objects[obj] for obj, (defined, _) in table.items() for sym in defined}
    found = []
    for obj, (_, undefined) in table.items():
        layer = objects[obj]
        for sym in sorted(undefined):
            other = owner.get(sym)
            if other is not None and other != layer and other not in ALLOWED[layer]:
                found.append(f"{obj.stem} ({layer}) uses {sym} of {other}")
    return found


def compile_objects(sources: list[Path], root: Path, out: Path) -> dict[Path, str]:
    objects = {}
    for src in sources:
        obj = out / (str(src.relative_to(root)).replace("/", "_") + ".o")
        subprocess.run(["gcc", *cbuild.CFLAGS, f"-I{root}", f"-I{root / 'sim' / 'common'}", "-c", str(src),
                        "-o", str(obj)], check=True, capture_output=True, timeout=120)
        objects[obj] = layer_of(src, root)
    return objects


def library_sources(root: Path) -> list[Path]:
    target = next(t for t in cbuild.TARGETS if t.output == "libflexai.so")
    return target.sources(root)


@pytest.fixture(scope="module")
def tools():
    if not shutil.which("gcc") or not shutil.which("nm"):
        pytest.skip("needs gcc and nm (binutils)")


def test_every_library_file_is_in_a_known_layer():
    layers = {layer_of(src, ROOT) for src in library_sources(ROOT)}
    assert layers <= set(ALLOWED), f"a folder with no rule in ALLOWED: {layers - set(ALLOWED)}"
    assert {"core", "cuda", "nvml", "acl", "route"} <= layers


def test_core_calls_no_vendor_and_vendors_keep_to_their_lanes(tools, tmp_path):
    found = violations(compile_objects(library_sources(ROOT), ROOT, tmp_path))
    assert not found, "layer rule broken (docs/libflexai.md):\n" + "\n".join(found)


def test_the_check_catches_a_core_file_calling_a_vendor(tools, tmp_path):
    """The check itself can fail: a core file that calls a CUDA front-end function directly."""
    root = tmp_path / "src"
    (root / "core").mkdir(parents=True)
    (root / "cuda").mkdir()
    (root / "core" / "limits.c").write_text("int flexai_cu_device(int *d);\n"
                                            "int card(void) { int d; return flexai_cu_device(&d); }\n")
    (root / "cuda" / "memory.c").write_text("int flexai_cu_device(int *d) { *d = 0; return 0; }\n")
    (root / "sim" / "common").mkdir(parents=True)
    out = tmp_path / "obj"
    out.mkdir()
    found = violations(compile_objects(sorted(root.rglob("*.c")), root, out))
    assert found == ["core_limits.c (core) uses flexai_cu_device of cuda"]
