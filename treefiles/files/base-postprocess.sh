#!/bin/sh
# Runs inside the tree, without network.
set -eu
# No account has a password: root logs in only with a key from provisioning.
passwd --lock root >/dev/null
