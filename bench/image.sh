#!/bin/bash
# Image benchmark, from one run on the same machine: cairn's commit → qcow2 beside `mkfs.ext4 -d`
# of the same deployed sysroot, and treefile → bootable qcow2 (cold package cache) beside the
# by-hand pipeline (../shared/peer/by-hand.sh, end to end). The manifest is manifests/qemu.toml's
# layout and formats with the base treefile, the package set by-hand installs (BENCH_MANIFEST
# overrides it). Time figures are wall clock on a shared machine: rerun when others load it.
# Usage: bench/image.sh [WORKDIR]   (needs root; about 6 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps
cargo build --release -q
# cargo honours CARGO_TARGET_DIR; CAIRN_BIN overrides the binary outright.
bin=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/cairn}
w=${1:-/var/tmp/cairn-image-bench}
# shellcheck source=bench/lib.sh
. bench/lib.sh
clean "$w"; mkdir -p "$w"
unset SOURCE_DATE_EPOCH
manifest=${BENCH_MANIFEST:-$w/qemu-base.toml}
[ -n "${BENCH_MANIFEST:-}" ] ||
  sed -e "s|^treefile = .*|treefile = \"$PWD/treefiles/base.toml\"|" \
    -e 's|^provisioning = .*|provisioning = "none"|' manifests/qemu.toml >"$manifest"

echo "by-hand pipeline..." >&2
bash ../shared/peer/by-hand.sh "$w/byhand" >"$w/byhand.txt"
byhand_total=$(awk '$1=="total" {print $2}' "$w/byhand.txt")
byhand_qcow2=$(stat -c %s "$w/byhand/disk.qcow2")
clean "$w/byhand"

echo "cairn build, cold package cache..." >&2
build=$(seconds "$bin" build "$manifest" --json --repo "$w/repo" --cache "$w/cache" --out "$w/images")
ref=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["ref"])' <"$w/last.out")
qcow2=$(ls "$w"/images/*.qcow2)
echo "cairn build, warm package cache, empty repo..." >&2
warm=$(seconds "$bin" build "$manifest" --repo "$w/repo-warm" --cache "$w/cache" --out "$w/images-warm")
clean "$w/repo-warm"; rm -rf "$w/images-warm"
echo "cairn image from the composed commit..." >&2
image=$(seconds /usr/bin/time -f "%U %S" -o "$w/image.cpu" \
  "$bin" image "$manifest" --repo "$w/repo" --cache "$w/cache" --out "$w/images2")
cp "$w/last.err" "$w/image.log"   # the phase times of the image step
image_cpu=$(awk '{print $1 + $2}' "$w/image.cpu")
compression=$(qemu-img info --output=json "$qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"].get("compression-type", "zlib"))')

echo "mkfs.ext4 -d of the same deployed sysroot..." >&2
s=$w/sysroot; mkdir -p "$s"
ostree admin init-fs "$s" >/dev/null
ostree admin os-init --sysroot="$s" cairn >/dev/null
ostree --repo="$s/ostree/repo" pull-local "$w/repo" "$ref" >/dev/null
ostree --repo="$s/ostree/repo" config set sysroot.bootloader none
ostree admin deploy --sysroot="$s" --os=cairn "$ref" --karg=root=LABEL=root >/dev/null
mkfs=$(seconds mkfs.ext4 -q -F -L root -d "$s" "$w/root.ext4" 3600M)
clean "$s"; rm -f "$w/root.ext4"

python3 - "$byhand_total" "$byhand_qcow2" "$build" "$(stat -c %s "$qcow2")" "$image" "$mkfs" "$image_cpu" "$warm" "$compression" <<'PY'
import sys
bh, bhq, build, q, image, mkfs, cpu, warm = map(float, sys.argv[1:9])
compression = sys.argv[9]
print(f"cairn commit -> qcow2 (cairn image)          {image:7.2f} s   (CPU {cpu:.2f} s, qcow2 {compression})")
print(f"mkfs.ext4 -d of the same deployed sysroot     {mkfs:7.2f} s   ratio {image / mkfs:5.2f}  target <= 1.5  {'met' if image / mkfs <= 1.5 else 'MISSED'}")
print(f"cairn treefile -> qcow2, cold cache (build)   {build:7.2f} s   by-hand {bh:.2f} s  ratio {build / bh:5.2f}  target <= 1.0  {'met' if build <= bh else 'MISSED'}")
print(f"cairn treefile -> qcow2, warm cache (build)   {warm:7.2f} s   by-hand {bh:.2f} s  ratio {warm / bh:5.2f}  target < 0.5  {'met' if warm < bh / 2 else 'MISSED'}")
print(f"qcow2 size ({compression}): cairn {q / 2**20:.0f} MiB, by-hand {bhq / 2**20:.0f} MiB  target: no larger  {'met' if q <= bhq else 'MISSED'}")
PY
