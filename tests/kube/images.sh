#!/usr/bin/env bash
# Weft's container images, built as OCI archives from the built binaries
# (cargo build --release --bins, or WEFT_BIN_DIR=target/ci after the test
# suite's build) with no registry and no container engine:
#
#   tests/kube/images.sh OUT_DIR   # writes OUT_DIR/<image>.tar, prints their paths
#
# The names are the ones the install manifests use
# (docker.io/weft/<program>:<version>), so a node that imported them runs
# the shipped manifests unchanged with imagePullPolicy IfNotPresent.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: images.sh OUT_DIR}
mkdir -p "$out"
stripped=$(mktemp -d)
trap 'rm -rf "$stripped"' EXIT
version=$(awk -F'"' '/^\[workspace.package\]/ {p = 1} p && /^version *=/ {print $2; exit}' Cargo.toml)
bins=${WEFT_BIN_DIR:-target/release}
# program:uid the image runs as (the proxy's own uid, 2103, is what the
# redirect rules exempt; the CNI installer writes host files as root).
for image in weft-proxy:2103 weft-controller:2101 weft-injector:2104 weft-cni:0 weft-demo:1000; do
    program=${image%%:*} uid=${image##*:}
    [[ -x $bins/$program ]] || { echo "images.sh: build $bins/$program first" >&2; exit 1; }
    # Release builds keep line tables for backtraces; images do not need them.
    strip --strip-debug -o "$stripped/$program" "$bins/$program"
    python3 tests/kube/oci-image.py --name "docker.io/weft/$program:$version" --out "$out/$program.tar" \
        --entrypoint "/usr/local/bin/$program" --user "$uid:$uid" --file "$stripped/$program:/usr/local/bin/$program" >&2
    echo "$out/$program.tar"
done
