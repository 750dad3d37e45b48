#!/bin/busybox sh
# /init of the guest that `cargo xtask vm-test` boots (xtask/src/vm/): loads netconsole with the
# configuration under test, writes the known records to /dev/kmsg, powers off.
#
# Set by the kernel command line (unknown `key=value` parameters become init's environment):
#   nct_ip   the guest's address on eth0, e.g. 10.80.0.10 (a /24)
#   nct_nc   netconsole's module parameter, e.g. +6665@10.80.0.10/eth0,6666@10.80.0.1/
#   nct_run  the run id that every record's text starts with (NCT-<run>)
# Built into the initramfs by xtask:
#   /modules/order    the modules to insmod, dependencies first (netconsole.ko last)
#   /records/NNNN     one record each, `<prio>text\n`, written with one write(2)
# Lines starting `NCT-` on the serial console are read by xtask.

/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

fail() {
    echo "NCT-FAIL $*"
    poweroff -f
    exit 1
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

[ -n "$nct_ip" ] && [ -n "$nct_nc" ] && [ -n "$nct_run" ] || fail "nct_ip, nct_nc or nct_run missing from the kernel command line"
echo "NCT-INIT kernel $(uname -r) run $nct_run"

while read -r module; do
    case "$module" in
    netconsole.ko) ;;
    *) insmod "/modules/$module" || fail "insmod $module" ;;
    esac
done </modules/order
if grep -q configfs /proc/filesystems; then
    mount -t configfs configfs /sys/kernel/config || fail "mount configfs"
fi

ip link set lo up
ip addr add "$nct_ip/24" dev eth0 || fail "no eth0"
ip link set eth0 up || fail "eth0 up"
# netpoll waits for the carrier itself, but not for long (4 s): make sure it is there.
n=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ]; do
    n=$((n + 1))
    [ $n -gt 100 ] && fail "eth0 has no carrier"
    sleep 0.05
done

# Loading netconsole replays the whole log buffer to the target, then sends every new record.
insmod /modules/netconsole.ko "netconsole=$nct_nc" || fail "insmod netconsole.ko netconsole=$nct_nc"
grep -q '^netconsole ' /proc/modules || fail "netconsole not loaded"
echo "NCT-LOADED netconsole=$nct_nc"

written=0
for record in /records/*; do
    if cat "$record" >/dev/kmsg 2>/dev/null; then
        written=$((written + 1))
    else
        echo "NCT-REJECTED ${record##*/}"
    fi
done
echo "NCT-WRITTEN $written"
# The last records are still in virtio's queue when cat returns: let qemu send them.
sleep 0.3
echo "NCT-DONE"
poweroff -f
