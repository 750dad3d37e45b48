#!/bin/busybox sh
# /init of the guest where `cargo xtask vm-test` runs `netcon-sniff sender-config`
# (xtask/src/vm/senderconf.rs): for each network layout, it asks sender-config for the line to
# the collector, loads netconsole with exactly that line, writes one record, unloads it.
#
# Set by the kernel command line:
#   nct_net  the N of 10.N.0.0/24: the guest is 10.N.0.10 (10.N.100.10 on VLAN 100), the
#            collector 10.N.0.1 (nobody owns 10.N.100.1: the VLAN case broadcasts)
#   nct_run  the run id that every record's text starts with (NCT-<run>)
# Lines on the serial console: `NCT-SC-OUT <case> <line>` (sender-config's JSON, stdout and
# stderr), `NCT-SC-EXIT <case> <status>`, `NCT-SC-LOADED <case> <status>`, then NCT-DONE.

. /init-common.sh
[ -n "$nct_net" ] && [ -n "$nct_run" ] || fail "nct_net or nct_run missing from the kernel command line"
echo "NCT-INIT kernel $(uname -r) run $nct_run"

load_modules netconsole.ko
ip link set lo up

# sender-config for case $1 with the extra options $2; its output on the console.
sender_config() {
    netcon-sniff sender-config --target "$target" --extended --format json $2 >/tmp/out 2>&1
    status=$?
    while IFS= read -r line; do echo "NCT-SC-OUT $1 $line"; done </tmp/out
    echo "NCT-SC-EXIT $1 $status"
    return $status
}

# Loads netconsole with the line sender-config printed for case $1, writes the case's record,
# unloads it.
load_printed_line() {
    param=$(sed -n 's/^  "netconsole": "\(.*\)",$/\1/p' /tmp/out)
    insmod /modules/netconsole.ko "netconsole=$param"
    echo "NCT-SC-LOADED $1 $?"
    echo "<6>NCT-$nct_run SC $1" >/dev/kmsg
    sleep 0.5
    rmmod netconsole 2>/dev/null
}

net=$nct_net
target=10.$net.0.1

# Same segment: eth0 itself, the collector's MAC.
ip addr add "10.$net.0.10/24" dev eth0 || fail "address on eth0"
ip link set eth0 up
wait_carrier eth0 200
sender_config same "" && load_printed_line same
ip addr flush dev eth0

# VLAN 100 on eth0: nobody answers ARP there, so the line broadcasts.
ip link add link eth0 name eth0.100 type vlan id 100 || fail "eth0.100"
ip addr add "10.$net.100.10/24" dev eth0.100
ip link set eth0.100 up
target=10.$net.100.1
sender_config vlan "" && load_printed_line vlan
# The VLAN's address with --dev eth0: the frames would leave untagged.
sender_config vlan-dev "--dev eth0 --resolve-ms 0"
ip link del eth0.100
target=10.$net.0.1

# eth0 enslaved to bond0: sender-config names bond0 and its line works; --dev eth0 is refused.
ip link set eth0 down
# Loading bonding makes bond0 already (max_bonds=1).
[ -e /sys/class/net/bond0 ] || echo +bond0 >/sys/class/net/bonding_masters || fail "bond0"
echo +eth0 >/sys/class/net/bond0/bonding/slaves || fail "enslaving eth0"
ip addr add "10.$net.0.10/24" dev bond0
ip link set bond0 up
wait_carrier bond0 200
sender_config bond "" && load_printed_line bond
sender_config enslaved "--dev eth0"

echo "NCT-DONE"
poweroff -f
