#!/bin/bash
# Boot benchmark, from one run on the same machine, one VM at a time, every VM with the same QEMU
# settings (those of `cairn vm-test`: q35, SeaBIOS, virtio disk and network, the NoCloud seed
# attached, TCG unless BENCH_ACCEL says otherwise, BENCH_CPUS vCPUs and BENCH_MEMORY):
#   - the by-hand host (../shared/peer/by-hand.sh): QEMU start → a login prompt on the console;
#   - the shipped image (manifests/qemu.toml): QEMU start → ready (an SSH login as root with the
#     provisioned key, and `systemctl is-system-running --wait` says `running`), then
#     `systemctl reboot` → ready again (a power cycle, as the harness and a cloud do it).
# Prints each time, the ratios against the targets, and where the guest spent its boots
# (systemd-analyze and unit timestamps from the guest). Each VM's console log, and the guest's
# `systemd-analyze blame` and `critical-chain`, stay in WORKDIR.
# BENCH_IMAGE=… boots that image instead of building the shipped one (`cairn build`, a no-op
# when nothing changed); BENCH_BYHAND_IMAGE=… boots that qcow2 instead of running by-hand.sh.
# BENCH_ROUNDS=N alternates N rounds of the three boots and prints the medians; BENCH_NICE=N runs
# the VMs at that priority.
# Usage: bench/boot.sh [WORKDIR]   (needs root; about 5 minutes a round on a quiet machine, 10 more
# when it builds both images)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
setup /var/tmp/cairn-boot-bench "$@"
accel=${BENCH_ACCEL:-tcg}
cpus=${BENCH_CPUS:-2}
memory=${BENCH_MEMORY:-1536}
# BENCH_NICE=-10 runs every VM at that priority: on a machine others load, closer to a quiet one.
nice=${BENCH_NICE:-}
limit=600 # seconds a boot may take before the benchmark gives up

now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load average at the start: $(load)" >"$w/load.txt"

image=${BENCH_IMAGE:-}
if [ -z "$image" ]; then
  echo "shipped image (cairn build manifests/qemu.toml)..." >&2
  "$bin" build manifests/qemu.toml --json --out "$w/images" >"$w/build.json" 2>"$w/build.log" ||
    { cat "$w/build.log" >&2; exit 1; }
  image=$(python3 -c 'import json,sys; print([a["path"] for a in json.load(sys.stdin)["artifacts"] if a["format"] == "qcow2"][0])' <"$w/build.json")
fi
byhand=${BENCH_BYHAND_IMAGE:-}
if [ -z "$byhand" ]; then
  echo "by-hand image (../shared/peer/by-hand.sh)..." >&2
  bash ../shared/peer/by-hand.sh "$w/byhand" >"$w/byhand.txt"
  byhand=$w/byhand/disk.qcow2
fi

# The NoCloud seed cairn's harness gives its VMs: a hostname, and an ephemeral key for root.
ssh-keygen -q -t ed25519 -N '' -f "$w/key"
printf 'instance-id: cairn-boot-bench\nlocal-hostname: cairn-boot-bench\n' >"$w/meta-data"
printf '#cloud-config\ndisable_root: false\nssh_pwauth: false\nssh_authorized_keys:\n  - "%s"\n' \
  "$(cat "$w/key.pub")" >"$w/user-data"
mkfs.vfat -n CIDATA -C "$w/seed.img" 1024 >/dev/null
mcopy -i "$w/seed.img" "$w/user-data" "$w/meta-data" ::
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

qemu_pid=""
stop_qemu() { [ -z "$qemu_pid" ] || { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=""; }; }
trap stop_qemu EXIT

# overlay NAME IMAGE: a copy-on-write overlay 2 GiB bigger than IMAGE (the root grows into it).
overlay() {
  local size
  size=$(qemu-img info --output=json "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] + (2 << 30))')
  qemu-img create -q -f qcow2 -F qcow2 -b "$(realpath "$2")" "$w/$1.qcow2" "$size"
}

# power_on NAME: start QEMU on $w/NAME.qcow2, console appended to $w/NAME.console.
power_on() {
  ${nice:+nice -n "$nice"} qemu-system-x86_64 -accel "$accel" -machine q35 -cpu max -m "$memory" -smp "$cpus" -display none \
    -drive "if=virtio,file=$w/$1.qcow2,format=qcow2,discard=unmap" \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=net0 \
    -device virtio-rng-pci \
    -drive "if=virtio,file=$w/seed.img,format=raw,readonly=on" \
    -chardev "file,id=console0,path=$w/$1.console,append=on" -serial chardev:console0 \
    -no-reboot >>"$w/$1.qemu.log" 2>&1 &
  qemu_pid=$!
}

alive() { kill -0 "$qemu_pid" 2>/dev/null || { echo "QEMU ended; see $w/$1.qemu.log and $w/$1.console" >&2; exit 1; }; }

guest() {
  ssh -i "$w/key" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=10 -o LogLevel=ERROR root@127.0.0.1 "$@"
}

# wait_ready NAME START: until an SSH login works and systemd settles; prints the seconds since
# START. `degraded` or anything but `running` fails the benchmark.
wait_ready() {
  local state
  while ! state=$(guest 'systemctl is-system-running --wait' 2>/dev/null); do
    case $state in running | degraded | maintenance | stopping) break ;; esac
    alive "$1"
    [ "$(since "$2" | cut -d. -f1)" -lt "$limit" ] || { echo "$1: not ready after $limit s" >&2; exit 1; }
    sleep 0.5
  done
  since "$2"
  [ "$state" = running ] || { echo "$1: the system is $state" >&2; guest 'systemctl --failed' >&2; exit 1; }
}

# phases NAME: where the boot went, from the guest's own clock (monotonic µs since the kernel
# started): kernel, initramfs, system before cloud-init, cloud-init's stages, the rest.
phases() {
  guest 'systemd-analyze blame' >"$w/$1.blame.txt" 2>&1 || true
  guest 'systemd-analyze critical-chain' >"$w/$1.critical-chain.txt" 2>&1 || true
  guest 'systemd-analyze' >"$w/$1.analyze.txt" 2>&1 || true
  guest 'systemctl show -p InitRDTimestampMonotonic -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic; \
    for u in cloud-init-local cloud-init cloud-config cloud-final; do \
      echo "$u $(systemctl show -P InactiveExitTimestampMonotonic $u.service) $(systemctl show -P ActiveEnterTimestampMonotonic $u.service)"; \
    done; echo "uptime $(cut -d" " -f1 /proc/uptime)"' >"$w/$1.phases.txt"
}

# One round: the by-hand host, then the shipped image's first boot (a fresh overlay) and reboot.
# BENCH_ROUNDS rounds alternate the two, so that a change in the machine's load reaches both;
# the figures are then the medians.
rounds=${BENCH_ROUNDS:-1}
for r in $(seq 1 "$rounds"); do
  echo "round $r/$rounds: by-hand host, QEMU start → login prompt..." >&2
  rm -f "$w/byhand.qcow2" "$w/byhand.console"
  overlay byhand "$byhand"
  start=$(now); power_on byhand
  until grep -q 'login:' "$w/byhand.console" 2>/dev/null; do
    alive byhand
    [ "$(since "$start" | cut -d. -f1)" -lt "$limit" ] || { echo "by-hand: no login prompt after $limit s" >&2; exit 1; }
    sleep 0.2
  done
  echo "byhand $(since "$start")" >>"$w/times.txt"
  stop_qemu

  echo "round $r/$rounds: shipped image, QEMU start → ready..." >&2
  rm -f "$w/shipped.qcow2"
  overlay shipped "$image"
  start=$(now); power_on shipped
  echo "first $(wait_ready shipped "$start")" >>"$w/times.txt"
  phases first
  echo "round $r/$rounds: shipped image, systemctl reboot → ready..." >&2
  start=$(now)
  guest 'systemctl reboot' 2>/dev/null || true
  while kill -0 "$qemu_pid" 2>/dev/null; do
    [ "$(since "$start" | cut -d. -f1)" -lt "$limit" ] || { echo "the guest did not power off" >&2; exit 1; }
    sleep 0.2
  done
  wait "$qemu_pid" || true
  echo "down $(since "$start")" >>"$w/times.txt"
  power_on shipped
  echo "reboot $(wait_ready shipped "$start")" >>"$w/times.txt"
  phases reboot
  stop_qemu
done
echo "load average at the end: $(load)" >>"$w/load.txt"

python3 - "$w" "$accel" "$cpus" "$memory" "${nice:-0}" <<'PY'
import statistics
import sys
w, accel, cpus, memory, nice = sys.argv[1:6]
times = {}
for line in open(f"{w}/times.txt"):
    k, v = line.split()
    times.setdefault(k, []).append(float(v))
bh, first, reboot, down = (statistics.median(times[k]) for k in ("byhand", "first", "reboot", "down"))
rounds = len(times["byhand"])

def phases(name):
    d, units = {}, {}
    for line in open(f"{w}/{name}.phases.txt"):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            d[k] = int(v or 0) / 1e6
        else:
            parts = line.split()
            if parts[0] == "uptime":
                d["uptime"] = float(parts[1])
            elif len(parts) == 3 and int(parts[1] or 0) and int(parts[2] or 0):
                units[parts[0]] = (int(parts[1]) / 1e6, int(parts[2]) / 1e6)
    return d, units

def describe(name):
    d, units = phases(name)
    initrd, user, finish = d["InitRDTimestampMonotonic"], d["UserspaceTimestampMonotonic"], d["FinishTimestampMonotonic"]
    out = [f"kernel {initrd:.1f}", f"initramfs {user - initrd:.1f}"]
    if units:
        ci_start = min(s for s, _ in units.values())
        ci_end = max(e for _, e in units.values())
        busy = sum(e - s for s, e in units.values())
        stages = ", ".join(f"{u.replace('cloud-', '')} {e - s:.1f}" for u, (s, e) in units.items())
        out += [f"system before cloud-init {ci_start - user:.1f}",
                f"cloud-init {ci_end - ci_start:.1f} from its first stage to its last ({busy:.1f} in its stages: {stages})",
                f"after cloud-init to systemd's startup finished {max(finish - ci_end, 0):.1f}"]
    else:
        out += [f"system (no cloud-init ran) {finish - user:.1f}"]
    return f"  {name}, in the guest (s): " + "; ".join(out) + f"; startup finished at {finish:.1f} (guest clock)"

print(f"QEMU: {accel}, q35, SeaBIOS, {cpus} vCPUs, {memory} MiB, virtio, nice {nice}; one VM at a time; "
      + (f"medians of {rounds} rounds" if rounds > 1 else "one round"))
print(f"by-hand host: QEMU start -> login prompt           {bh:7.2f} s")
rows = [("shipped image: first boot, QEMU start -> ready", first, 1.0),
        ("shipped image: reboot, systemctl reboot -> ready", reboot, 0.8)]
for name, secs, target in rows:
    r = secs / bh
    print(f"{name:<50} {secs:7.2f} s  ratio {r:5.2f}  target <= {target:.1f} x by-hand  {'met' if r <= target else 'MISSED'}")
print(f"  (the reboot: {down:.2f} s to power off, {reboot - down:.2f} s from power on to ready)")
if rounds > 1:
    for k in ("byhand", "first", "reboot"):
        print(f"  {k} in each round: " + ", ".join(f"{v:.2f}" for v in times[k]))
print(describe("first") + (" (last round)" if rounds > 1 else ""))
print(describe("reboot") + (" (last round)" if rounds > 1 else ""))
print(open(f"{w}/load.txt").read().rstrip())
PY
