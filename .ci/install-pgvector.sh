#!/usr/bin/env bash
# Builds and installs pgvector for Postgres 15 from Debian's own source package.
# Debian bookworm ships no pgvector package, so the source comes from the trixie deb-src suite
# (only sources are taken from trixie; no binary package of the system changes).
# Idempotent: does nothing when the extension is already installed.
set -euo pipefail

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"

if [ ! -x "$PG_CONFIG" ]; then
  echo "install-pgvector: $PG_CONFIG not found; install postgresql-15 first" >&2
  exit 1
fi

sharedir="$("$PG_CONFIG" --sharedir)"
if [ -f "$sharedir/extension/vector.control" ]; then
  echo "install-pgvector: already installed ($(grep default_version "$sharedir/extension/vector.control"))"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# Reuse the mirror the machine already uses for Debian (deb822 .sources or one-line sources.list).
mirror="$(
  {
    grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
  } | grep -E '/debian/?$' | head -n1
)" || true
mirror="${mirror:-http://deb.debian.org/debian}"

src_list=/etc/apt/sources.list.d/pgvector-trixie-src.sources
if [ ! -f "$src_list" ]; then
  cat >"$src_list" <<EOF
Types: deb-src
URIs: ${mirror%/}
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

apt-get update
apt-get install -y --no-install-recommends postgresql-server-dev-15 dpkg-dev build-essential

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
cd "$workdir"
apt-get source pgvector
cd pgvector-*/
make PG_CONFIG="$PG_CONFIG"
make install PG_CONFIG="$PG_CONFIG"

echo "install-pgvector: installed $(grep default_version "$sharedir/extension/vector.control")"
