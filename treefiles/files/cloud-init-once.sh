#!/bin/sh
# cairn: cloud-init provisions an instance on its first boot; later boots skip it, as Ignition
# does on CoreOS, unless provisioning asked for something at every boot. Each stage of cloud-init
# starts Python again, which took 9 to 11 s of every reboot under emulation (TCG).
#
# cairn-cloud-init-once.service, started after cloud-final.service when cloud-init ran, runs
# this with --write as the boot ends (so that `cloud-init status` says "done" through the first
# boot), to write /etc/cloud/cloud-init.disabled; without --write it only says what it would do. cloud-init's
# generator reads that file at each boot: cloud-init does not run, and `cloud-init status` says
# "disabled" (`--wait` returns). A boot that ends without a clean shutdown writes nothing, and
# cloud-init runs again at the next one. To run cloud-init at every boot again: remove the file
# (or boot once with `cloud-init=enabled` on the kernel command line); to provision again from
# scratch: `cloud-init clean` as well.
#
# cloud-init stays on at every boot when this instance's cloud-config or vendor-data has
# `bootcmd`, it has boothooks or per-boot scripts, no datasource provided it (DataSourceNone: a
# seed may come at a later boot), or its first boot ended with errors.
# CLOUD_INIT_ONCE_ROOT prefixes every path (for tests).
set -eu
r=${CLOUD_INIT_ONCE_ROOT:-}
inst=$r/var/lib/cloud/instance
flag=$r/etc/cloud/cloud-init.disabled
stays() { echo "cloud-init stays on at every boot: $*"; exit 0; }

[ -e "$inst/boot-finished" ] || stays "this instance's first boot did not finish"
grep -qs '^DataSourceNone' "$inst/datasource" && stays "no datasource provided this instance"
# cloud-init writes its result as indented JSON, with `"errors": []` when there were none.
result=$r/run/cloud-init/result.json
if [ -f "$result" ] && ! grep -q '"errors": \[\]' "$result"; then
  stays "its first boot ended with errors (cloud-init status --long)"
fi
for f in "$inst/cloud-config.txt" "$inst/vendor-cloud-config.txt" "$inst/vendor2-cloud-config.txt"; do
  if grep -qs '^bootcmd:' "$f"; then stays "${f#"$r"} has bootcmd"; fi
done
for d in "$inst/boothooks" "$r/var/lib/cloud/scripts/per-boot"; do
  if [ -n "$(ls -A "$d" 2>/dev/null)" ]; then stays "${d#"$r"} is not empty"; fi
done

iid=$(cat "$r/var/lib/cloud/data/instance-id" 2>/dev/null || echo unknown)
if [ "${1:-}" != --write ]; then
  echo "instance $iid provisioned: cloud-init will skip the boots after this one"
  exit 0
fi
printf '%s\n' \
  "# Written by cairn-cloud-init-once.service as the first boot of instance $iid ended:" \
  "# cloud-init does not run at later boots. Remove this file to run it at every boot again." \
  >"$flag.tmp"
mv "$flag.tmp" "$flag"
sync "$flag"
echo "instance $iid provisioned: cloud-init skips the boots after this one (${flag#"$r"})"
# A deployment made during this boot (`cairn node upgrade` before the first shutdown, as a fleet
# rollout does) took its /etc from this one before the file existed: it gets the file too, so
# that its trial boot does not provision the instance again.
for etc in "$r"/ostree/deploy/*/deploy/*/etc; do
  [ -d "$etc/cloud" ] && ! [ "$etc" -ef "$r/etc" ] && [ ! -e "$etc/cloud/cloud-init.disabled" ] || continue
  cp "$flag" "$etc/cloud/cloud-init.disabled.tmp"
  mv "$etc/cloud/cloud-init.disabled.tmp" "$etc/cloud/cloud-init.disabled"
  sync "$etc/cloud/cloud-init.disabled"
  echo "and in the deployment ${etc#"$r"/ostree/deploy/}, made during this boot"
done
