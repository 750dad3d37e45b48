#!/bin/busybox sh
# /init of the guests in which `cargo xtask vm-test` runs netcon-sniff itself
# (xtask/src/vm/inguest.rs): for each scenario, starts netcon-sniff on eth0, says on the console
# when it listens (the host then sends a real capture into the guest's NIC, and a sentinel
# datagram last), stops it with SIGTERM once the sentinel is in its output, and copies its
# output, stderr and exit status to the virtio port `netcon.out`. Then powers off.
#
# Built into the initramfs by xtask:
#   /init-common.sh       the start every guest shares (vm/init-common.sh), sourced first
#   /modules/order        the modules to insmod, dependencies first
#   /bin/netcon-sniff     the binary under test, with its shared libraries and loader
#   /scenarios/NN         one line each: `<name> <netcon-sniff arguments>`
# Lines starting `NCT-` on the serial console are read by xtask:
#   NCT-SNIFF-READY NN     netcon-sniff listens: send the capture now
#   NCT-SNIFF-EXITED NN    it ended before listening (expected where a backend cannot load)
#   NCT-SNIFF-STOPPED NN   its output and exit status are on the port
# On the port, each file is `NCT-FILE <NN> <out|err|rc> <bytes>\n` followed by its bytes.

. /init-common.sh
echo "NCT-INIT kernel $(uname -r)"

load_modules
# BPF maps and XDP need no bpffs; the ring buffer is mmap()ed from its map's descriptor.
ip link set lo up
ip link set eth0 up || fail "eth0 up"
wait_carrier eth0 100

port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = netcon.out ] && port="/dev/${p##*/}"
done
[ -n "$port" ] && [ -c "$port" ] || fail "no virtio port netcon.out"

# put NN kind file: one framed file on the port.
put() {
    echo "NCT-FILE $1 $2 $(wc -c <"$3")" >"$port"
    cat "$3" >"$port"
}

# Every wait is bounded.
for scenario in /scenarios/*; do
    nn=${scenario##*/}
    read -r name args <"$scenario"
    echo "NCT-SNIFF-START $nn $name"
    # shellcheck disable=SC2086 # the arguments are split on purpose
    /bin/netcon-sniff $args >"/tmp/$nn.out" 2>"/tmp/$nn.err" &
    pid=$!
    state=timeout
    i=0
    while [ $i -lt 3000 ]; do
        if grep -q "listening on" "/tmp/$nn.err"; then
            state=READY
            break
        fi
        if ! kill -0 $pid 2>/dev/null; then
            state=EXITED
            break
        fi
        i=$((i + 1))
        sleep 0.02
    done
    echo "NCT-SNIFF-$state $nn"
    if [ $state = READY ]; then
        # The host sends the capture, then the sentinel: once the sentinel is printed, so is
        # every frame before it (one interface, one queue, in order).
        i=0
        while [ $i -lt 2400 ] && ! grep -q "NCT-SENTINEL-$nn" "/tmp/$nn.out"; do
            i=$((i + 1))
            sleep 0.05
        done
        [ $i -ge 2400 ] && echo "NCT-SNIFF-NO-SENTINEL $nn"
        # Periodic stats (`--stats 1`) need time to show that they keep coming.
        case "$name" in *stats*) sleep 2.5 ;; esac
        # SIGTERM, not SIGINT: a background job of a script starts with SIGINT ignored.
        kill -TERM $pid
        i=0
        while kill -0 $pid 2>/dev/null && [ $i -lt 1000 ]; do
            i=$((i + 1))
            sleep 0.02
        done
        kill -0 $pid 2>/dev/null && { echo "NCT-SNIFF-KILLED $nn"; kill -KILL $pid; }
    elif [ $state = timeout ]; then
        kill -KILL $pid
    fi
    wait $pid
    echo $? >"/tmp/$nn.rc"
    put "$nn" out "/tmp/$nn.out"
    put "$nn" err "/tmp/$nn.err"
    put "$nn" rc "/tmp/$nn.rc"
    echo "NCT-SNIFF-STOPPED $nn"
done
sync
echo "NCT-DONE"
poweroff -f
