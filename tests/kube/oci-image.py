#!/usr/bin/env python3
"""Packs files into a one-layer OCI image archive that `ctr images import`
accepts, with no registry and no container engine.

    oci-image.py --name localhost/weft-proxy:dev --out proxy.tar \
        --entrypoint /usr/bin/weft-proxy --user 2103 \
        --file target/release/weft-proxy:/usr/bin/weft-proxy

Dynamically linked programs get the shared libraries `ldd` names, at the
same paths, so release binaries run unchanged. The archive is reproducible:
fixed timestamps and owners, sorted entries.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile


def shared_libraries(path):
    """The absolute paths of the libraries (and loader) a program needs."""
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [m.group(1) for m in re.finditer(r"(/\S+) \(0x", out)]


def layer(entries, generated, dirs):
    """A tar of the image's filesystem. `entries` maps a path in the image
    to a source file on this machine, `generated` to file contents."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d.lstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777 if d == "/tmp" else 0o755, 0
            tar.addfile(info)
        for dest in sorted(entries):
            src = os.path.realpath(entries[dest])
            info = tarfile.TarInfo(dest.lstrip("/"))
            info.size, info.mtime = os.path.getsize(src), 0
            info.mode = 0o755 if os.access(src, os.X_OK) else 0o644
            with open(src, "rb") as f:
                tar.addfile(info, f)
        for dest, data in sorted(generated.items()):
            info = tarfile.TarInfo(dest.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="image reference, e.g. localhost/weft-proxy:dev")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--entrypoint", required=True, help="program to run")
    p.add_argument("--user", default="", help="numeric uid[:gid]")
    p.add_argument("--file", action="append", default=[], help="SRC:DEST, repeatable")
    args = p.parse_args()

    entries = {}
    for spec in args.file:
        src, _, dest = spec.partition(":")
        if not dest.startswith("/"):
            p.error(f"--file {spec!r}: DEST must be an absolute path")
        entries[dest] = src
        for lib in shared_libraries(src):
            entries.setdefault(lib, lib)
    dirs = {"/tmp", "/etc", "/proc", "/sys", "/dev", "/var", "/var/run"}
    for dest in entries:
        parent = os.path.dirname(dest)
        while parent not in ("/", ""):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    # Enough of /etc for libc and for tools that look the user up.
    etc = {"/etc/passwd": "root:x:0:0::/:/sbin/nologin\nweft:x:2103:2103::/:/sbin/nologin\n"
           "nobody:x:65534:65534::/:/sbin/nologin\n",
           "/etc/group": "root:x:0:\nweft:x:2103:\nnogroup:x:65534:\n",
           "/etc/nsswitch.conf": "hosts: files dns\n"}

    tar_bytes = layer(entries, {k: v.encode() for k, v in etc.items()}, dirs)

    blobs = {}

    def blob(data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    compressed = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    layer_desc = blob(compressed, "application/vnd.oci.image.layer.v1.tar+gzip")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": [args.entrypoint], "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                   "WorkingDir": "/", **({"User": args.user} if args.user else {})},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]},
    }
    config_desc = blob(json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": args.name,
                                    "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1]}
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}

    with tarfile.open(args.out, "w") as out:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            out.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(blobs.items()):
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    print(f"{args.name} {manifest_desc['digest']} ({len(compressed) // 1024} KiB)")


if __name__ == "__main__":
    main()
