"""Builds the C side: libflexai.so, the simulated driver libraries and the front-door programs.

The package build (setup.py) and developers (`python -m flexai_hook.install.cbuild`) both call
`build()`. It drives the C compiler through setuptools' compiler abstraction, which is the
toolchain cffi uses, so the library is built with the same compiler and flags family as any
cffi extension on this host. No libpython is linked: the outputs are plain shared objects.

Targets are fixed here; a target whose source folder holds no `.c` file yet is skipped, so
the build works while a part is still being written. Rebuilds are by modification time.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "libflexai"
CFLAGS = ["-std=gnu11", "-O2", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror",
          "-D_GNU_SOURCE", "-fno-strict-aliasing"]


@dataclass(frozen=True)
class Target:
    output: str                  # path relative to the output directory
    source_dirs: tuple[str, ...]  # under libflexai/: folders (all their *.c) or single .c files
    libraries: tuple[str, ...]
    soname: str | None = None    # None: an executable, not a shared object
    needs: tuple[str, ...] = ()  # outputs (built before it) it links against, found at run time beside it

    def sources(self, root: Path) -> list[Path]:
        found: list[Path] = []
        for entry in self.source_dirs:
            if entry.endswith(".c"):
                found.extend([root / entry] if (root / entry).exists() else [])
            else:
                found.extend(sorted((root / entry).glob("*.c")))
        return found


TARGETS: tuple[Target, ...] = (
    # the front door (route.c), the vendor-neutral core, and one folder per vendor front end
    Target("libflexai.so", (".", "core", "cuda", "nvml", "acl"), ("dl", "pthread"), "libflexai.so"),
    Target("sim/libcuda.so.1", ("sim/cuda", "sim/common"), ("pthread", "rt", "m"), "libcuda.so.1"),
    Target("sim/libnvidia-ml.so.1", ("sim/nvml", "sim/common"), ("pthread", "rt", "m"),
           "libnvidia-ml.so.1"),
    Target("sim/libascendcl.so", ("sim/acl", "sim/common"), ("pthread", "rt", "m"),
           "libascendcl.so"),
    # A forwarding CANN install: the runtime's entry points live in libacl_rt.so, and libascendcl.so
    # only depends on it (as open-source CANN builds them).
    Target("sim/cann/libacl_rt.so", ("sim/acl", "sim/common"), ("pthread", "rt", "m"), "libacl_rt.so"),
    Target("sim/cann/libascendcl.so", ("sim/acl_forward",), (), "libascendcl.so",
           needs=("sim/cann/libacl_rt.so",)),
    # Front doors of the per-container-start commands (see libflexai/launch/).
    Target("bin/flexai-runtime", ("launch/runtime_front.c", "launch/prepare.c", "launch/launch.c"), ()),
    Target("bin/flexai-hook", ("launch/hook_front.c", "launch/launch.c"), ()),
    # What a program sees of its card (CUDA driver API + NVML): the demo runs it in a slice.
    Target("bin/flexai-smi", ("tools/flexai_smi.c",), ("dl",)),
)


def _headers(root: Path) -> list[Path]:
    return sorted(root.rglob("*.h"))


def _stale(output: Path, inputs: list[Path]) -> bool:
    if not output.exists():
        return True
    built = output.stat().st_mtime
    return any(p.stat().st_mtime > built for p in inputs)


def build(out_dir: Path, root: Path = SOURCE_ROOT, force: bool = False,
          verbose: bool = False, obj_dir: Path | None = None) -> list[Path]:
    """Compile every target with sources into out_dir; return the paths of the outputs."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler(verbose=verbose)
    customize_compiler(compiler)
    built: list[Path] = []
    headers = _headers(root)
    for target in TARGETS:
        sources = target.sources(root)
        own = Target(target.output, target.source_dirs[:1], ()).sources(root)
        if not own:  # the target's own part is not written yet (shared code alone is no library)
            continue
        output = out_dir / target.output
        needs = [out_dir / n for n in target.needs]
        if any(not n.exists() for n in needs):
            continue  # what it links against was not built (its sources are not written yet)
        if force or _stale(output, sources + headers + needs):
            objects_dir = (obj_dir or root.parent / "build" / "cobj") / target.output.replace("/", "_")
            objects = compiler.compile(
                [str(s) for s in sources], output_dir=str(objects_dir),
                include_dirs=[str(root), str(root / "sim" / "common")],
                extra_preargs=CFLAGS)
            output.parent.mkdir(parents=True, exist_ok=True)
            if target.soname is None:
                compiler.link_executable(objects, str(output), libraries=list(target.libraries),
                                         extra_preargs=["-Wl,-z,now", "-Wl,--as-needed"])
            else:
                compiler.link_shared_object(
                    objects, str(output), libraries=list(target.libraries),
                    extra_preargs=[f"-Wl,-soname,{target.soname}", "-Wl,-z,now", "-Wl,--as-needed"],
                    extra_postargs=(["-Wl,--no-as-needed", *map(str, needs), "-Wl,-rpath,$ORIGIN"]
                                    if needs else None))
        built.append(output)
    # The region header ships beside the library: flexai_hook.devices.region reads its cffi block.
    region_header = root / "flexai_region.h"
    if region_header.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        copy = out_dir / region_header.name
        if force or _stale(copy, [region_header]):
            copy.write_bytes(region_header.read_bytes())
    return built


def package_lib_dir() -> Path:
    """Where an in-place build puts the libraries (flexai_hook/lib/)."""
    return Path(__file__).resolve().parents[1] / "lib"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flexai_hook.install.cbuild",
        description="Build libflexai.so and the simulated driver libraries in place.")
    parser.add_argument("--out", type=Path, default=package_lib_dir(),
                        help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("-v", "--verbose", action="store_true", help="show compiler commands")
    args = parser.parse_args(argv)
    try:
        outputs = build(args.out, force=args.force, verbose=args.verbose)
    except Exception as exc:  # CompileError/LinkError carry the compiler's own message
        print(f"flexai: C build failed: {exc}", file=sys.stderr)
        return 1
    for path in outputs:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
