#!/bin/bash
# Rollout benchmark: three app-example nodes (qemu provider) behind HAProxy move from v1 to v2 in
# place with max-unavailable = 1 while `cairn fleet load` sends requests through HAProxy. Prints
# the rollout's wall time beside ceil(N / max-unavailable) × one node's time (drain + upgrade +
# reboot + health + bake, from the rollout's own audit lines of the same run; target: within
# 1.1 ×), and the load's request count and failures.
# Usage: bench/rollout.sh [WORKDIR]   (needs root; about 30 minutes under TCG, most of it composing
# v1 and booting the nodes)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
setup /var/tmp/cairn-bench-rollout "$@"
mkdir -p "$w/tf"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
repo_port=$(port)
lb_port=$(port)
paths=(--repo "$w/repo" --images "$w/images" --fleets "$w/fleets")
loader=
stop() {
  [ -z "$loader" ] || kill "$loader" 2>/dev/null || true
  "$bin" fleet down "$w/fleet.toml" "${paths[@]}" >/dev/null 2>&1 || true
}
trap stop EXIT

cat >"$w/app.toml" <<EOF
name = "bench-app"
ref = "cairn/amd64/app-example"
osname = "cairn"
kernel-arguments = ["console=ttyS0,115200n8", "panic=10", "rd.shell=0", "rd.emergency=reboot",
                    "rd.modules-load=virtio_pci,virtio_blk,virtio_scsi"]
size = "4G"
firmware = ["bios"]
formats = ["qcow2"]
provisioning = "nocloud"
remote-url = "http://10.0.2.2:$repo_port/"
EOF
cat >"$w/fleet.toml" <<EOF
name = "bench"
[provider]
type = "qemu"
image = "app.toml"
nodes = 3
memory = "1024M"
[service]
port = 80
healthy-threshold = 2
[load-balancer]
listen = "127.0.0.1:$lb_port"
[repo]
listen = "127.0.0.1:$repo_port"
[policy]
max-unavailable = 1
bake-time = "5s"
drain-timeout = "20s"
node-timeout = "25m"
EOF
printf 'include = ["%s/treefiles/app-example.toml"]\npackages = ["hello"]\n' "$PWD" >"$w/tf/v2.toml"

echo "v1: compose $(seconds "$bin" compose treefiles/app-example.toml --repo "$w/repo" --cache "$w/cache") s," \
  "image $(seconds "$bin" image "$w/app.toml" --repo "$w/repo" --cache "$w/cache" --out "$w/images") s," \
  "fleet up $(seconds "$bin" fleet up "$w/fleet.toml" "${paths[@]}") s"
echo "v2 (adds hello): compose $(seconds "$bin" compose "$w/tf/v2.toml" --repo "$w/repo" --cache "$w/cache") s"

"$bin" fleet load "$w/fleet.toml" --json >"$w/load.json" 2>"$w/load.err" &
loader=$!
sleep 5
wall=$(seconds "$bin" rollout start "$w/fleet.toml" --to cairn/amd64/app-example "${paths[@]}")
sleep 5
kill -TERM "$loader"
wait "$loader" || true
loader=

python3 - "$w/repo.audit.jsonl" "$wall" "$w/load.json" <<'EOF'
import datetime, json, math, sys
audit, wall, load = sys.argv[1], float(sys.argv[2]), json.load(open(sys.argv[3]))
t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
first, baking, done = {}, {}, {}
for line in open(audit):
    e = json.loads(line)
    if e.get("command") != "rollout":
        continue
    d = e.get("detail", {})
    node, step, at = d.get("node"), d.get("step"), t(e["time"])
    if step == "draining":
        first.setdefault(node, at)
    elif step == "baking":
        baking[node] = at
    elif step == "done":
        done[node] = at
nodes = sorted(first)
per = {n: done[n] - first[n] for n in nodes if n in done}
if len(per) != len(nodes) or not per:
    sys.exit(f"not every node finished: {sorted(done)} of {nodes}")
for n in nodes:
    print(f"  {n}: drain+upgrade+reboot+health {baking[n] - first[n]:.0f} s, bake {done[n] - baking[n]:.0f} s")
mean = sum(per.values()) / len(per)
batches = math.ceil(len(nodes) / 1)
expected = batches * mean
print(f"rollout wall time {wall:.0f} s; ceil({len(nodes)} / 1) x one node's {mean:.0f} s = {expected:.0f} s;"
      f" ratio {wall / expected:.2f} (target <= 1.10)")
print(f"load: {load['requests']} requests, {load['failed']} failed {load['failures']}, by page {load['bodies']}")
EOF
