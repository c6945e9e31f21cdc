#!/bin/bash
# Delta benchmark: the bytes a client transfers to go from v1 to v2 of a signed stream, where v2
# adds one small package (BENCH_PACKAGE, default hello), beside the bytes of a full pull of v2.
# Target: the update is at most 5 % of the full commit. Bytes are counted by `cairn repo serve`
# (each response's length, from its request log) and checked against ostree's own count.
# Usage: bench/delta.sh [WORKDIR]   (needs root; about 5 minutes, most of it composing the base)
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps
cargo build --release -q
bin=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/cairn}
w=${1:-/var/tmp/cairn-delta-bench}
# shellcheck source=bench/lib.sh
. bench/lib.sh
clean "$w"; mkdir -p "$w/tf"
unset SOURCE_DATE_EPOCH
pkg=${BENCH_PACKAGE:-hello}
# The GPG home under /tmp: gpg-agent's socket path must stay short.
keys=$(mktemp -d /tmp/cairn-bench-keys.XXXXXX)
server=
stop() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  gpgconf --homedir "$keys/k" --kill gpg-agent 2>/dev/null || true
  rm -rf "$keys"
}
trap stop EXIT
export GNUPGHOME=$keys/k
read -r fpr public < <("$bin" key new "$GNUPGHOME" --json |
  python3 -c 'import json,sys; k = json.load(sys.stdin); print(k["fingerprint"], k["public_key"])')

layer() {  # layer PACKAGES: the signed test layer on the shipped base
  printf 'include = ["%s/treefiles/base.toml"]\nref = "bench/amd64/rel"\ngpg-key = "%s"\npackages = [%s]\n' \
    "$PWD" "$fpr" "$1" >"$w/tf/rel.toml"
  "$bin" compose "$w/tf/rel.toml" --repo "$w/repo" --cache "$w/cache" >&2
}
client() {  # client DIR: a node-like (bare-user) repo that verifies the key's signatures
  ostree --repo="$1" init --mode=bare-user
  ostree --repo="$1" remote add --set=gpg-verify=true --gpg-import="$public" s "$url"
}
served() { awk '/ GET \//{n++; if (n > skip) s += $NF} END {print s + 0}' skip="$1" "$w/serve.log"; }
requests() { grep -c ' GET /' "$w/serve.log" || true; }

echo "composing v1 (base and an empty signed layer)..." >&2
layer ""
"$bin" -v repo serve --listen 127.0.0.1:0 --repo "$w/repo" >"$w/serve.out" 2>"$w/serve.log" &
server=$!
for _ in $(seq 50); do [ -s "$w/serve.out" ] && break; sleep 0.1; done
url=$(awk '{print $NF}' "$w/serve.out")
client "$w/c1"
ostree --repo="$w/c1" pull s bench/amd64/rel >/dev/null

echo "composing v2 (adds $pkg)..." >&2
layer "\"$pkg\""
n=$(requests)
update_ostree=$(ostree --repo="$w/c1" pull s bench/amd64/rel | grep transferred || true)
update=$(served "$n")
grep -q 'delta parts' <<<"$update_ostree" || { echo "the update used no static delta: $update_ostree" >&2; exit 1; }

echo "full pull of v2 into an empty client..." >&2
client "$w/c2"
n=$(requests)
full_ostree=$(ostree --repo="$w/c2" pull --disable-static-deltas s bench/amd64/rel | grep transferred || true)
full=$(served "$n")

python3 - "$update" "$full" "$pkg" "$update_ostree" "$full_ostree" <<'PY'
import sys
update, full = int(sys.argv[1]), int(sys.argv[2])
pkg, uo, fo = sys.argv[3:6]
ratio = 100.0 * update / full
print(f"v1 -> v2 (+{pkg}), static delta:  {update:>11} bytes  ({update / 2**20:7.2f} MiB)   ostree: {uo}")
print(f"v2 in full, objects:            {full:>11} bytes  ({full / 2**20:7.2f} MiB)   ostree: {fo}")
print(f"update / full: {ratio:.2f} %   target <= 5 %   {'met' if ratio <= 5 else 'MISSED'}")
PY
