#!/usr/bin/env bash
# Set up nftdocker on Debian 12 (run as root): the system packages it and its tests use,
# then a virtual environment in .venv built from Debian's python3 (python3-nftables, the
# libnftables binding, imports only there) with the project installed into it.
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  python3 python3-venv python3-nftables nftables   # libnftables and its binding
  iproute2 iptables conntrack                       # namespaces, veths; legacy iptables for verify
  busybox-static qemu-system-x86                    # the nftables-only guest kernel test
  docker.io                                         # a real Docker Engine for the live tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  # Never let a package start its service (dockerd would program the host's firewall).
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv/bin/nftdocker)" >&2
