#!/bin/bash
# Compose benchmark: cairn beside the by-hand pipeline (../shared/peer/by-hand.sh), from one run
# on the same machine. Prints one line per figure and the ratios against the targets.
# Usage: bench/compose.sh [WORKDIR]   (needs root; takes about 8 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
setup /var/tmp/cairn-bench "$@"


peer=../shared/peer/by-hand.sh
echo "by-hand pipeline ($peer)..." >&2
bash "$peer" "$w/byhand" >"$w/byhand.txt"
byhand_compose=$(awk '$1=="step" && ($2=="mmdebstrap"||$2=="dracut"||$2=="layout"||$2=="commit") {s+=$3} END {printf "%.2f", s}' "$w/byhand.txt")
byhand_total=$(awk '$1=="total" {print $2}' "$w/byhand.txt")
clean "$w/byhand"

echo "cairn cold (empty repo and package cache)..." >&2
cold=$(seconds "$bin" compose treefiles/base.toml --repo "$w/r1" --cache "$w/cache")
echo "cairn warm package cache (empty repo)..." >&2
warm=$(seconds "$bin" compose treefiles/base.toml --repo "$w/r2" --cache "$w/cache")
echo "cairn no-op..." >&2
noop=$(seconds "$bin" compose treefiles/base.toml --repo "$w/r2" --cache "$w/cache")
echo "cairn layers blessed + app-example on base..." >&2
cp -r treefiles "$w/tf"
layers=$(seconds "$bin" compose "$w/tf/app-example.toml" --repo "$w/r2" --cache "$w/cache")
echo "cairn app-example with one more package..." >&2
sed -i 's/^packages = \["nginx-light"\]/packages = ["nginx-light", "curl"]/' "$w/tf/app-example.toml"
grep -q '"curl"' "$w/tf/app-example.toml"
add1=$(seconds "$bin" compose "$w/tf/app-example.toml" --repo "$w/r2" --cache "$w/cache")

python3 - "$byhand_compose" "$byhand_total" "$cold" "$warm" "$noop" "$layers" "$add1" <<'PY'
import sys
bh, bht, cold, warm, noop, layers, add1 = map(float, sys.argv[1:])
print(f"by-hand compose steps (mmdebstrap+dracut+layout+commit): {bh:7.2f} s  (whole by-hand pipeline {bht:.2f} s)")
rows = [
    ("cairn cold compose, empty cache", cold, cold / bh, "<= 1.1 x by-hand", cold / bh <= 1.1),
    ("cairn compose, warm package cache", warm, warm / bh, "<= 0.6 x by-hand", warm / bh <= 0.6),
    ("cairn no-op", noop, None, "<= 1 s", noop <= 1.0),
    ("cairn blessed + app-example layers", layers, layers / bh, "", None),
    ("cairn one package added to app-example", add1, add1 / cold, "<= 0.25 x cold", add1 / cold <= 0.25),
]
for name, secs, ratio, target, ok in rows:
    r = f"{ratio:5.2f}" if ratio is not None else "    -"
    verdict = "" if ok is None else ("met" if ok else "MISSED")
    print(f"{name:<40} {secs:7.2f} s  ratio {r}  target {target:<17} {verdict}")
PY
