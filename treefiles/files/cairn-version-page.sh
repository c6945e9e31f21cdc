#!/bin/sh
# Write /var/www/html/index.html with the booted deployment's version (from os-release).
set -eu
. /usr/lib/os-release
mkdir -p /var/www/html
cat > /var/www/html/index.html <<HTML
<!doctype html>
<title>cairn app-example</title>
<p>version: ${OSTREE_VERSION:-unknown}</p>
HTML
