#!/usr/bin/env bash
# Set up nftdocker on Debian 12 or 13 (run as root).
#
#   bash setup.sh          what nftdocker itself needs: nftables and its Python binding
#                          (python3-nftables), iproute2, python3-venv, and a virtual environment in
#                          .venv built from Debian's /usr/bin/python3 with --system-site-packages
#                          (the libnftables binding imports only there), with nftdocker in it.
#   bash setup.sh --test   the above, and what the test suite uses besides: legacy iptables and
#                          conntrack (verify), busybox-static and qemu (the nftables-only guest
#                          kernel test), systemd (systemd-analyze verify of the units), a Docker
#                          Engine for the live tests (Debian's docker.io, only when the host has
#                          no dockerd of its own: an existing engine, e.g. Docker CE, is used
#                          as it is), and the test extras in .venv.
#
# No package's service is started while installing (dockerd would program the host's firewall).
set -euo pipefail
cd "$(dirname "$0")"

test_setup=""
case "${1:-}" in
  "") ;;
  --test) test_setup=1 ;;
  *) echo "usage: bash setup.sh [--test]" >&2; exit 2 ;;
esac

packages=(python3 python3-venv python3-nftables nftables iproute2)
if [ -n "$test_setup" ]; then
  packages+=(iptables conntrack busybox-static qemu-system-x86 systemd)
  # A host that already runs a Docker Engine keeps it: installing docker.io beside Docker CE
  # would replace the user's engine.
  if command -v dockerd >/dev/null 2>&1 || [ -x /usr/bin/dockerd ] || [ -x /usr/sbin/dockerd ] \
     || dpkg-query -W -f='${Status}' docker-ce 2>/dev/null | grep -q "ok installed"; then
    echo "setup: using the Docker Engine already installed ($(command -v dockerd || echo docker-ce))" >&2
  else
    packages+=(docker.io)
  fi
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # removed again however apt-get ends (a left-over policy would block every service start)
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
extras="kernel,docker"
[ -n "$test_setup" ] && extras="kernel,docker,test"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
echo "setup: ready (.venv/bin/nftdocker)" >&2
