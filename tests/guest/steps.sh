# Guest steps, sourced by /init (tests/guest/init.sh) inside the nftables-only guest.
#
#   step NAME CMD [ARG...]   run CMD (a command or a function below), its output framed by
#                            @@BEGIN NAME / @@END NAME rc=N on the console
#
# tests/test_guest_kernel.py wants rc=0 from every step except restore*/ ones, and for every
# case whose Docker rules have nat rules a restore4|6/CASE/nat step that the kernel refused.
#
#   /cases/CASE/    scenario.toml, iptables-save.txt, ip6tables-save.txt (the project's
#                   rulesets/, or ../shared/reference while rulesets/ has none)
#   /docker/CASE/   iptables-save.txt, ip6tables-save.txt: what Docker 28.0.1 itself programmed
#   /opt/nftdocker  the project's nftdocker package

export PYTHONPATH=/opt/nftdocker
cd /tmp || exit 1

nftdocker() { python3 -m nftdocker "$@"; }
GUEST_DIR=etc/nftdocker-guest

# busybox's sh runs its own applets before anything on $PATH: iproute2's ip by its path.
ip() { /usr/sbin/ip "$@"; }

# compat WANT [ARG...]: the live table as iptables-save text against the file WANT
# (lines starting with '#' left out of both); a unified diff when they differ.
compat() {
	_want=$1
	shift
	nftdocker show --format iptables "$@" >/tmp/got.txt
	_rc=$?
	if [ "$_rc" -ne 0 ]; then
		echo "nftdocker show --format iptables $* exited $_rc"
		return "$_rc"
	fi
	grep -v '^#' "$_want" >/tmp/want.nc
	grep -v '^#' /tmp/got.txt >/tmp/got.nc
	diff -u -L "$_want" -L "nftdocker show --format iptables $*" /tmp/want.nc /tmp/got.nc
}

# not_left: after remove, no nftdocker table is left in the kernel.
not_left() {
	nft list tables
	! nft list tables | grep -q nftdocker
}

# docker_rules FAMILY CASE FILE: iptables-nft-restore (ip6tables-nft-restore for 6) each
# table of Docker's FILE on its own, one step each; the kernel's answer is the step's output.
docker_rules() {
	_restore=iptables-nft-restore
	[ "$1" = 6 ] && _restore=ip6tables-nft-restore
	rm -rf /tmp/tables && mkdir /tmp/tables
	awk '/^\*/ { t = substr($0, 2); print t >> "/tmp/tables/order" }
	     t != "" && !/^#/ { print > ("/tmp/tables/" t) }' "$3"
	for _t in $(cat /tmp/tables/order 2>/dev/null); do
		step "restore$1/$2/$_t" "$_restore" "/tmp/tables/$_t"
		nft flush ruleset
	done
}

# links: Docker's kind of links, two bridges and a veth pair in one of them (bridge, veth and
# br_netfilter are among the loaded modules).
links() {
	ip link add docker0 type bridge && ip link add bridge1 type bridge &&
		ip link add veth0 type veth peer name eth0 && ip link set veth0 master bridge1 &&
		ip link set docker0 up && ip link set bridge1 up && ip link set veth0 up &&
		ip link set eth0 up && ip -br link show
}
step links links

# nftdocker's own steps for every case, in one Python process (start-up costs ~1 s under TCG).
python3 "/$GUEST_DIR/cases.py" /cases

for dir in /cases/*/; do
	name=$(basename "$dir")
	for fam in 4 6; do
		file=/docker/$name/iptables-save.txt
		[ "$fam" = 6 ] && file=/docker/$name/ip6tables-save.txt
		[ -f "$file" ] && docker_rules "$fam" "$name" "$file"
	done
done
