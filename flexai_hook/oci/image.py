"""A one-layer container image from a directory, as one tar that `docker load`, `ctr images
import` and `podman load` all read: an OCI image layout with a docker-save `manifest.json` beside
its `index.json`. For tests and benchmarks, where no registry is reachable."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path


def image_archive(rootfs: Path, out: Path, name: str = "flexai-busybox", tag: str = "latest",
                  cmd: Sequence[str] = ("sh",)) -> Path:
    """Write the image archive of `rootfs` (one layer, root-owned files) to `out`; `cmd` is the
    image's default command (a pod sandbox image needs one that keeps running)."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for path in sorted(rootfs.rglob("*")):
            info = layer.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    layer.addfile(info, f)
            else:
                layer.addfile(info)
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    layer_digest = blob(layer_buf.getvalue())
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "flexai tests: static busybox"}],
    }, sort_keys=True).encode()
    config_digest = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{config_digest}",
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{layer_digest}",
                    "size": len(blobs[layer_digest])}],
    }).encode()
    manifest_digest = blob(manifest)
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{manifest_digest}",
         "size": len(manifest),
         "annotations": {"io.containerd.image.name": f"docker.io/library/{name}:{tag}",
                         "org.opencontainers.image.ref.name": tag}}]}).encode()
    docker_manifest = json.dumps([{"Config": f"blobs/sha256/{config_digest}", "RepoTags": [f"{name}:{tag}"],
                                   "Layers": [f"blobs/sha256/{layer_digest}"]}]).encode()
    with tarfile.open(out, "w") as archive:
        def add(name_: str, data: bytes) -> None:
            info = tarfile.TarInfo(name_)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))

        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        add("manifest.json", docker_manifest)
        for digest, data in blobs.items():
            add(f"blobs/sha256/{digest}", data)
    return out
