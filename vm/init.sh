#!/bin/busybox sh
# /init of the guest that `cargo xtask vm-test` boots (xtask/src/vm/): loads netconsole with the
# configuration under test, writes the known records to /dev/kmsg, powers off.
#
# Set by the kernel command line (unknown `key=value` parameters become init's environment):
#   nct_ip   the guest's address on eth0, e.g. 10.80.0.10 (a /24)
#   nct_nc   netconsole's module parameter, e.g. +6665@10.80.0.10/eth0,6666@10.80.0.1/
#   nct_run  the run id that every record's text starts with (NCT-<run>)
#   nct_cfs  (optional) set up the target of nct_nc through configfs instead of the module
#            parameter, with this `key=value` as userdata and every sysdata the kernel has
#   nct_panic (optional) after the records, set kernel.panic to this and crash the kernel
#            (sysrq c): the crash report is what netconsole sends last
#   nct_start_at (optional) seconds of uptime to wait for before netconsole starts: puts this
#            boot's first records near the previous boot's last kernel timestamps
# Built into the initramfs by xtask:
#   /init-common.sh   the start every guest shares (vm/init-common.sh), sourced first
#   /modules/order    the modules to insmod, dependencies first (netconsole.ko last)
#   /records/NNNN     one record each, `<prio>text\n`, written with one write(2)
# Lines starting `NCT-` on the serial console are read by xtask.

. /init-common.sh

[ -n "$nct_ip" ] && [ -n "$nct_nc" ] && [ -n "$nct_run" ] || fail "nct_ip, nct_nc or nct_run missing from the kernel command line"
echo "NCT-INIT kernel $(uname -r) run $nct_run"

load_modules netconsole.ko
if grep -q configfs /proc/filesystems; then
    mount -t configfs configfs /sys/kernel/config || fail "mount configfs"
fi

ip link set lo up
ip addr add "$nct_ip/24" dev eth0 || fail "no eth0"
ip link set eth0 up || fail "eth0 up"
# netpoll waits for the carrier itself, but not for long (4 s): make sure it is there.
wait_carrier eth0 100

# A configfs target (Documentation/networking/netconsole.rst) from the same option string,
# [+]SRCPORT@SRCIP/DEV,TGTPORT@TGTIP/[MAC]. It replays nothing: it sends only what is logged
# after it is enabled.
configfs_target() {
    t=/sys/kernel/config/netconsole/nct
    spec=$nct_nc
    mkdir "$t" || fail "mkdir $t"
    case "$spec" in +*) echo 1 >"$t/extended" || fail "extended"; spec=${spec#+} ;; esac
    echo "${spec%%@*}" >"$t/local_port"; spec=${spec#*@}
    echo "${spec%%/*}" >"$t/local_ip"; spec=${spec#*/}
    echo "${spec%%,*}" >"$t/dev_name"; spec=${spec#*,}
    echo "${spec%%@*}" >"$t/remote_port"; spec=${spec#*@}
    echo "${spec%%/*}" >"$t/remote_ip"; spec=${spec#*/}
    [ -n "$spec" ] && { echo "$spec" >"$t/remote_mac" || fail "remote_mac $spec"; }
    mkdir "$t/userdata/${nct_cfs%%=*}" || fail "userdata (needs 6.9 or later)"
    echo "${nct_cfs#*=}" >"$t/userdata/${nct_cfs%%=*}/value" || fail "userdata value"
    for feature in cpu_nr taskname release msgid; do
        [ -e "$t/userdata/${feature}_enabled" ] && echo 1 >"$t/userdata/${feature}_enabled"
    done
    echo 1 >"$t/enabled" || fail "enabling the configfs target"
}

if [ -n "$nct_start_at" ]; then
    until awk -v t="$nct_start_at" '{ exit !($1 >= t) }' /proc/uptime; do sleep 0.05; done
fi
if [ -n "$nct_cfs" ]; then
    insmod /modules/netconsole.ko || fail "insmod netconsole.ko"
    configfs_target
else
    # Loading netconsole replays the whole log buffer to the target, then sends every new record.
    insmod /modules/netconsole.ko "netconsole=$nct_nc" || fail "insmod netconsole.ko netconsole=$nct_nc"
fi
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
# The last records are still in virtio's queue when cat returns (or, 7.x, in the printer
# thread's): let them go out.
sleep 0.3
if [ -n "$nct_panic" ]; then
    sleep 1
    echo "$nct_panic" >/proc/sys/kernel/panic || fail "kernel.panic=$nct_panic"
    echo "NCT-CRASH kernel.panic=$(cat /proc/sys/kernel/panic)"
    # The trigger file works whatever kernel.sysrq says (drivers/tty/sysrq.c).
    echo c >/proc/sysrq-trigger
    fail "still alive after sysrq c"
fi
echo "NCT-DONE"
poweroff -f
