#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for the load test (Dagster instance storage), if missing
# (idempotent; needs root or sudo). The tests start their own server on 127.0.0.1; the package's cluster is unused.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
ls /usr/lib/postgresql/*/bin/pg_ctl
