#!/bin/bash
# Lock benchmark, from one run on the same machine and the same loopback cluster (three etcd
# members of Debian's etcd-server, three `cairn lock serve` processes on it):
#   - the floor: airlock's semaphore as raw etcd transactions (a read and a compare-and-swap per
#     lock and per unlock), BENCH_WORKERS clients at a time, each on its own key;
#   - cairn lock: pre-reboot then steady-state through HTTP, BENCH_WORKERS clients at a time,
#     each in its own group, with everything a grant does for real (token check, lease, fencing
#     token, audit record);
#   - the time a dead holder's slot takes to free (20 holders that never renew; TTL 3 s).
# Prints grants/s, grant latency p50/p99, the floor and the ratio (target: ≥ 0.5).
# Usage: bench/lock.sh   (BENCH_WORKERS=32, BENCH_SECONDS=20; about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps >/dev/null
cargo test --release --test lock_simulation -- --ignored --nocapture bench_grants_per_second 2>&1 |
  grep -E '^(lock benchmark|floor|cairn lock|grant latency|ratio|dead slot)'
