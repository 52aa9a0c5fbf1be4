#!/usr/bin/env bash
# Install nftdocker for the systemd units (run as root from a checkout):
#
#   bash contrib/install.sh [--root DIR] [--no-systemd]
#
# - a virtual environment in /opt/nftdocker, made from Debian's /usr/bin/python3 with
#   --system-site-packages (python3-nftables, the libnftables binding, imports only there),
#   holding a copy of this checkout (`pip install`, not editable: the checkout may move);
# - /usr/local/sbin/nftdocker, a link to /opt/nftdocker/bin/nftdocker;
# - the units nftdocker-watch.service and nftdocker-apply.service in /etc/systemd/system
#   (enabled by nobody: see README.md), and /etc/nftdocker for the exported scenario;
# - then `systemctl daemon-reload` (not with --root or --no-systemd).
#
# Run it again to update. --root DIR installs below DIR instead of / (the tests use it).
# The Debian packages it needs are the ones `bash setup.sh` installs.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
root=""
reload=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a directory}"; reload=""; shift 2 ;;
    --no-systemd) reload=""; shift ;;
    *) echo "usage: bash contrib/install.sh [--root DIR] [--no-systemd]" >&2; exit 2 ;;
  esac
done
if [ -n "$root" ]; then
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
fi
venv="$root/opt/nftdocker"

if ! /usr/bin/python3 -c 'import nftables' 2>/dev/null; then
  echo "install: /usr/bin/python3 cannot import nftables: apt-get install python3-nftables (or run bash setup.sh)" >&2
  exit 3
fi
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$src[kernel,docker]"

install -d "$root/usr/local/sbin" "$root/etc/systemd/system" "$root/etc/nftdocker"
ln -sfn /opt/nftdocker/bin/nftdocker "$root/usr/local/sbin/nftdocker"
install -m 0644 "$src/contrib/nftdocker-watch.service" "$src/contrib/nftdocker-apply.service" "$root/etc/systemd/system/"
if [ -n "$reload" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "install: $("$venv/bin/nftdocker" --version) in $venv; units in $root/etc/systemd/system" >&2
