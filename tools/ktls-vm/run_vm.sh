#!/usr/bin/env bash
# Run a Python script inside a Linux kernel that has kTLS (Debian's linux-image-amd64,
# 6.1 on bookworm, CONFIG_TLS=m), booted under qemu (TCG: no KVM needed).
#
#   tools/ktls-vm/run_vm.sh [--python PY] SCRIPT [ARGS...]
#
# The guest's root is the host's "/" shared read-only over virtio-9p, so it runs the same
# interpreter, venv and repository checkout (SCRIPT keeps its host path). Writable in the guest:
# only /dev/shm (a tmpfs; TMPDIR and HOME point there). The console goes to stdout; the exit
# status is 0 only if the guest printed "KTLS_RESULT: PASS".
#
# Environment:
#   KTLS_VM_CACHE   kernel package + initramfs cache (default ${XDG_CACHE_HOME:-~/.cache}/tcpls-ktls-vm);
#                   built once (apt-get download, never installed), shared by concurrent runs
#   KTLS_VM_ACCEL   qemu accelerator (tcg; kvm where available)
#   KTLS_VM_MEM     guest memory in MiB (1024)
#   KTLS_VM_TIMEOUT seconds before the VM is killed (600)
#
# Missing host tools (qemu-system-x86, cpio, kmod, busybox-static) are installed with apt-get.
# This is the project's version of ../shared/tools/ktls-vm/ktls_qemu.sh; it differs in that each
# run gets its own directory (concurrent runs do not overwrite each other's scripts), the guest has
# a writable tmpfs (/dev/shm), and any script path and arguments can be passed.
set -euo pipefail

PY=/usr/bin/python3
if [ "${1:-}" = "--python" ]; then PY=$2; shift 2; fi
[ $# -ge 1 ] || { sed -n '5,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
SCRIPT=$(readlink -f "$1"); shift
CACHE=${KTLS_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tcpls-ktls-vm}
ACCEL=${KTLS_VM_ACCEL:-tcg}
MEM=${KTLS_VM_MEM:-1024}
VM_TIMEOUT=${KTLS_VM_TIMEOUT:-600}

log() { echo "run_vm: $*" >&2; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    }
}

host_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v depmod >/dev/null || missing+=(kmod)
    if ! { [ -x /usr/bin/busybox ] && file -L /usr/bin/busybox 2>/dev/null | grep -q static; }; then
        missing+=(busybox-static)
        command -v file >/dev/null || missing+=(file)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# Modules the guest needs: virtio + 9p for the shared root, then kTLS and the AEADs it uses.
BOOT_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p"
KTLS_MODULES="tls gcm ctr ghash_generic ghash_clmulni_intel aesni_intel chacha20poly1305 chacha_generic chacha_x86_64 poly1305_generic poly1305_x86_64"

build_cache() {
    if [ ! -d kpkg/boot ]; then
        local pkg
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
        if [ -z "$pkg" ]; then
            apt-get update -qq >/dev/null 2>&1
            pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
        fi
        [ -n "$pkg" ] || { log "no linux-image-amd64 package in the apt sources"; exit 1; }
        log "downloading $pkg (unpacked only)"
        rm -rf kpkg.tmp && mkdir kpkg.tmp
        (cd kpkg.tmp && apt-get download "$pkg" >/dev/null 2>&1 && dpkg -x "$pkg"_*.deb . && rm -f "$pkg"_*.deb)
        depmod -b kpkg.tmp "$(ls kpkg.tmp/lib/modules)"
        rm -rf kpkg && mv kpkg.tmp kpkg
    fi
    local kver
    kver=$(ls kpkg/lib/modules)
    [ -f initramfs-tcpls-2.cpio.gz ] && return
    local root=initramfs.tmp kdir=kpkg/lib/modules/$kver/kernel i=10 m f
    rm -rf $root && mkdir -p $root/{bin,mnt,proc,sys,dev,mods/boot,mods/ktls}
    cp /usr/bin/busybox $root/bin/
    for m in $BOOT_MODULES; do
        f=$(find "$kdir" -name "$m.ko*" | head -1)
        [ -n "$f" ] || { log "module $m not found in $kver"; exit 1; }
        cp "$f" $root/mods/boot/
    done
    # dependency order from modprobe, numbered so the shell glob keeps it
    for f in $(modprobe -d kpkg -S "$kver" --show-depends -a $KTLS_MODULES | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++'); do
        cp "$f" $root/mods/ktls/$i-$(basename "$f"); i=$((i + 1))
    done
    cat >$root/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo /bin/true >/proc/sys/kernel/modprobe   # everything is preloaded; autoload would cost seconds under TCG
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p; do
    insmod /mods/boot/$m.ko* 2>/dev/null
done
for f in /mods/ktls/*; do insmod "$f" || echo "insmod $f failed"; done
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $opts,ro hostroot /mnt
mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount -t devtmpfs dev /mnt/dev
# writable space: a tmpfs on /dev/shm (the host's /tmp stays visible, read-only: a checkout may live there)
mkdir -p /mnt/dev/shm; mount -t tmpfs -o size=60% tmpfs /mnt/dev/shm
mkdir -p /mnt/dev/shm/run; mount -t 9p -o $opts,ro run /mnt/dev/shm/run
ip link set lo up
echo "GUEST_UP uptime=$(cut -d' ' -f1 /proc/uptime)s"
chroot /mnt /bin/sh /dev/shm/run/guest.sh
echo "GUEST_DONE uptime=$(cut -d' ' -f1 /proc/uptime)s"
echo o >/proc/sysrq-trigger
sleep 10
EOF
    chmod +x $root/init
    (cd $root && find . | cpio -o -H newc 2>/dev/null | gzip -1) >initramfs-tcpls-2.cpio.gz.tmp
    mv initramfs-tcpls-2.cpio.gz.tmp initramfs-tcpls-2.cpio.gz
    rm -rf $root
}

host_tools
mkdir -p "$CACHE"
(
    cd "$CACHE"
    flock 9
    build_cache
) 9>"$CACHE/.lock"
KVER=$(ls "$CACHE/kpkg/lib/modules")

RUN=$(mktemp -d "${TMPDIR:-/tmp}/tcpls-ktls-vm.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
{
    echo 'export HOME=/dev/shm TMPDIR=/dev/shm PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1'
    echo "echo \"python start uptime=\$(cut -d' ' -f1 /proc/uptime)s\""
    printf 'cd %q\n' "$(dirname "$SCRIPT")"
    printf '%q -B %q' "$PY" "$SCRIPT"
    for a in "$@"; do printf ' %q' "$a"; done
    echo
} >"$RUN/guest.sh"

CPU=max
[ "$ACCEL" = kvm ] && CPU=host
log "booting $KVER ($ACCEL) for $SCRIPT"
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -machine q35 -cpu $CPU -smp 2 -m "$MEM" \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$CACHE/kpkg/boot/vmlinuz-$KVER" -initrd "$CACHE/initramfs-tcpls-2.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 random.trust_cpu=on cryptomgr.notests=1" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs local,path="$RUN",mount_tag=run,security_model=none,readonly=on,multidevs=remap \
    </dev/null | tr -d '\r' | grep --line-buffered -v -E '^\s*$|\x1b' | tee "$RUN/console.log"
set -e
grep -q "KTLS_RESULT: PASS" "$RUN/console.log"
