#!/bin/bash
# Image benchmark, from one run on the same machine: cairn's commit → qcow2 beside the by-hand
# pipeline's (../shared/peer/by-hand.sh) steps from its commit to its qcow2 (deploy, mkfs, disk,
# qcow2), and treefile → bootable qcow2 (cold package cache) beside the by-hand pipeline end to
# end. The manifest is manifests/qemu.toml's layout and formats with the base treefile, the
# package set by-hand installs (BENCH_MANIFEST overrides it). Time figures are wall clock on a
# shared machine: rerun when others load it.
# Usage: bench/image.sh [WORKDIR]   (needs root; about 6 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
setup /var/tmp/cairn-image-bench "$@"
manifest=${BENCH_MANIFEST:-$w/qemu-base.toml}
[ -n "${BENCH_MANIFEST:-}" ] ||
  sed -e "s|^treefile = .*|treefile = \"$PWD/treefiles/base.toml\"|" \
    -e 's|^provisioning = .*|provisioning = "none"|' manifests/qemu.toml >"$manifest"

echo "by-hand pipeline..." >&2
bash ../shared/peer/by-hand.sh "$w/byhand" >"$w/byhand.txt"
byhand_total=$(awk '$1=="total" {print $2}' "$w/byhand.txt")
byhand_image=$(awk '$1=="step" && ($2=="deploy"||$2=="mkfs"||$2=="disk"||$2=="qcow2") {s+=$3} END {printf "%.2f", s}' "$w/byhand.txt")
byhand_qcow2=$(stat -c %s "$w/byhand/disk.qcow2")
clean "$w/byhand"

echo "cairn build, cold package cache..." >&2
build=$(seconds "$bin" build "$manifest" --json --repo "$w/repo" --cache "$w/cache" --out "$w/images")
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

python3 - "$byhand_total" "$byhand_qcow2" "$build" "$(stat -c %s "$qcow2")" "$image" "$byhand_image" "$image_cpu" "$warm" "$compression" <<'PY'
import sys
bh, bhq, build, q, image, bhi, cpu, warm = map(float, sys.argv[1:9])
compression = sys.argv[9]
print(f"cairn commit -> qcow2 (cairn image)           {image:7.2f} s   (CPU {cpu:.2f} s, qcow2 {compression})")
print(f"by-hand commit -> qcow2 (deploy+mkfs+disk+qcow2) {bhi:7.2f} s   ratio {image / bhi:5.2f}  target <= 1.0  {'met' if image <= bhi else 'MISSED'}")
print(f"cairn treefile -> qcow2, cold cache (build)   {build:7.2f} s   by-hand {bh:.2f} s  ratio {build / bh:5.2f}  target <= 1.0  {'met' if build <= bh else 'MISSED'}")
print(f"cairn treefile -> qcow2, warm cache (build)   {warm:7.2f} s   by-hand {bh:.2f} s  ratio {warm / bh:5.2f}  target < 0.5  {'met' if warm < bh / 2 else 'MISSED'}")
print(f"qcow2 size ({compression}): cairn {q / 2**20:.0f} MiB, by-hand {bhq / 2**20:.0f} MiB  target: no larger  {'met' if q <= bhq else 'MISSED'}")
PY
