#!/usr/bin/env bash
# Installs a Debian package the tests need, unless FILE (a glob) already exists: idempotent; needs root or sudo.
# Usage: tools/install_debian_package.sh PACKAGE FILE
#   chromium   /usr/bin/chromium                   (the UI test's headless browser)
#   postgresql '/usr/lib/postgresql/*/bin/pg_ctl'  (the load test's instance storage; tests start their own server)
set -euo pipefail
package="$1" file="$2"
if compgen -G "$file" >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$package" >/dev/null
compgen -G "$file"
