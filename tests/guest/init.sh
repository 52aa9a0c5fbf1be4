#!/bin/sh
# /init of the nftables-only guest (built by tests/guest/build_guest.py, booted by
# tests/test_guest_kernel.py). Everything it says goes to the serial console, framed so the
# host can parse it:
#   @@INIT kernel=RELEASE t=UPTIME          init started
#   @@BEGIN NAME t=UPTIME                   a step starts; its stdout and stderr follow
#   @@END NAME rc=N t=UPTIME                the step ended with exit status N
#   @@DONE t=UPTIME                         all steps ran; poweroff follows
# UPTIME is /proc/uptime's first field (seconds since boot).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONUTF8=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Only emergencies from the kernel on the console: its messages would split our lines.
echo 1 >/proc/sys/kernel/printk
# Nothing may load a module behind the steps' back.
echo /bin/false >/proc/sys/kernel/modprobe

GUEST=/etc/nftdocker-guest

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }

# step NAME CMD [ARG...]: run CMD with stdout and stderr framed by @@BEGIN/@@END markers.
step() {
	_name=$1
	shift
	echo "@@BEGIN $_name t=$(uptime_s)"
	"$@" >/tmp/.step.out 2>&1
	_rc=$?
	cat /tmp/.step.out
	# An output without a final newline would glue the end marker to its last line.
	[ -s /tmp/.step.out ] && [ -n "$(tail -c 1 /tmp/.step.out)" ] && echo
	echo "@@END $_name rc=$_rc t=$(uptime_s)"
	return $_rc
}

echo "@@INIT kernel=$(uname -r) t=$(uptime_s)"

# Modules, dependencies first, each by path: there is no modprobe and no autoloading here.
while read -r mod path; do
	step "insmod/$mod" insmod "$path"
done <"$GUEST/modules"

step manifest cat "$GUEST/manifest.json"
. "$GUEST/steps.sh"

step modules cat /proc/modules
step dmesg dmesg
echo "@@DONE t=$(uptime_s)"
sync
poweroff -f
# Not reached; should poweroff fail, the kernel panics and qemu -no-reboot exits.
exit 1
