# The start every guest /init shares (vm/init.sh, vm/sniff-init.sh, vm/sender-init.sh source it
# first): busybox's applets on PATH, /proc, /sys and /dev mounted, `fail` and `load_modules`.
# xtask packs it into each initramfs as /init-common.sh (xtask/src/vm/initramfs.rs).

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

# insmod each module of /modules/order in turn (dependencies come first), except those named as
# arguments: the scripts that configure netconsole themselves load it later.
load_modules() {
    while read -r module; do
        case " $* " in
        *" $module "*) ;;
        *) insmod "/modules/$module" || fail "insmod $module" ;;
        esac
    done </modules/order
}

# Waits until device $1 has a carrier, checking every 50 ms, $2 times at most.
wait_carrier() {
    n=0
    while [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" != 1 ]; do
        n=$((n + 1))
        [ $n -gt "$2" ] && fail "$1 has no carrier"
        sleep 0.05
    done
}
