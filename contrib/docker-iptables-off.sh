#!/usr/bin/env bash
# Remove the iptables rules a Docker Engine 28 daemon programmed, once it has been stopped to run
# with "iptables": false and "ip6tables": false (dockerd never removes them while that code is off):
#
#   bash contrib/docker-iptables-off.sh IPTABLES-RULES [IP6TABLES-RULES]
#
# The RULES files are Docker's own rules in iptables-save form, recorded while dockerd still ran:
#   nftdocker compat --docker-host unix:///var/run/docker.sock        > docker-rules-v4.txt
#   nftdocker compat --docker-host unix:///var/run/docker.sock --ipv6 > docker-rules-v6.txt
# (the compat form of the live host equals what the daemon programmed; README.md). Each of those
# rules in a built-in chain (FORWARD's jumps to DOCKER-USER and DOCKER-FORWARD, nat PREROUTING's
# and OUTPUT's jumps to DOCKER, POSTROUTING's MASQUERADE/SNAT, raw PREROUTING's DROPs) is deleted
# once where still present; then the chains the file declares (DOCKER, DOCKER-BRIDGE, DOCKER-CT,
# DOCKER-FORWARD, DOCKER-ISOLATION-STAGE-1/2, DOCKER-USER; nat DOCKER) are flushed and deleted.
# The host's own rules, chains and policies are not touched. Running it again changes nothing.
set -euo pipefail

off() {  # off TOOL FILE
  local tool=$1 file=$2 table="" line n=0 chains=()
  local -a w
  while IFS= read -r line; do
    case "$line" in
      \**) table=${line#\*} ;;
      ":"*" - "*) chains+=("$table ${line#:}") ;;
      "-A "*)
        read -ra w <<<"$line"
        case "${w[1]}" in
          PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING)
            if "$tool" -w -t "$table" -C "${w[@]:1}" 2>/dev/null; then
              "$tool" -w -t "$table" -D "${w[@]:1}"
              n=$((n + 1))
            fi ;;
        esac ;;
    esac
  done < "$file"
  local c t name gone=0
  for pass in flush delete; do
    for c in "${chains[@]}"; do
      read -r t name _ <<<"$c"
      "$tool" -w -t "$t" -S "$name" >/dev/null 2>&1 || continue
      if [ "$pass" = flush ]; then
        "$tool" -w -t "$t" -F "$name"
      else
        "$tool" -w -t "$t" -X "$name"
        gone=$((gone + 1))
      fi
    done
  done
  echo "$tool: deleted $n rules from built-in chains and $gone chains of Docker's" >&2
}

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: bash contrib/docker-iptables-off.sh IPTABLES-RULES [IP6TABLES-RULES]" >&2; exit 2; }
for f in "$@"; do
  [ -r "$f" ] || { echo "docker-iptables-off: $f: cannot read it" >&2; exit 2; }
done
off iptables "$1"
[ $# -lt 2 ] || off ip6tables "$2"
