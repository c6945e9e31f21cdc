#!/bin/sh
# Runs inside the tree, without network.
set -eu
# No account has a password: root logs in only with a key from provisioning.
passwd --lock root >/dev/null
# Units that make no sense on an immutable host, masked (an operator can unmask them in /etc).
# Each one removed is also one thing less to run as root (see docs/treefile.md):
# - apt's daily download and upgrade, and dpkg's database backup: packages change only by a new
#   commit; apt cannot write /usr here, and the dpkg database is part of the commit.
# - e2scrub: checks ext4 on LVM snapshots; there is no LVM (its boot-time reaper still runs).
# - getty-static: five more gettys (tty2-tty6) when there is no logind; tty1 and the serial
#   console keep theirs.
# - systemd-binfmt: registers python3.11's .pyc as an executable format through binfmt_misc.
# - dracut-shutdown: unpacks the initramfs into /run at every shutdown, to unmount a root on
#   LVM, LUKS or the network; a plain ext4 root is unmounted by systemd itself.
# - debugfs and tracefs: kernel internals, mounted for debugging and tracing tools.
# - modprobe@dm_mod: there is no device mapper (dm_mod still loads when something asks for it).
# - modprobe@loop, modprobe@fuse, modprobe@configfs, and the fusectl and configfs mounts: one
#   modprobe each at every boot for modules nothing here uses at boot; each still loads when
#   used (/dev/loop-control and /dev/fuse are static nodes, mounting configfs loads it).
systemctl mask --quiet \
  apt-daily.timer apt-daily.service apt-daily-upgrade.timer apt-daily-upgrade.service \
  dpkg-db-backup.timer dpkg-db-backup.service \
  e2scrub_all.timer e2scrub_all.service e2scrub_reap.service \
  getty-static.service systemd-binfmt.service dracut-shutdown.service \
  sys-kernel-debug.mount sys-kernel-tracing.mount modprobe@dm_mod.service \
  modprobe@loop.service modprobe@fuse.service modprobe@configfs.service \
  sys-fs-fuse-connections.mount sys-kernel-config.mount
# Generators that run at every boot and daemon-reload for what a cairn host does not have:
# encrypted, integrity or verity volumes (no crypttab, integritytab, veritytab), hibernation,
# offline system updates, /etc/rc.local, SysV init scripts without a native unit. And
# systemd-gpt-auto-generator, which mounts partitions found by their GPT type where fstab says
# nothing: with /boot on the root filesystem it sets up an automount of the EFI system partition
# on /boot (refused only because ostree-prepare-root bind-mounted /boot first).
mkdir -p /etc/systemd/system-generators
for g in cryptsetup integritysetup veritysetup hibernate-resume system-update rc-local sysv gpt-auto; do
  ln -sf /dev/null "/etc/systemd/system-generators/systemd-$g-generator"
done
