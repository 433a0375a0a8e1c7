#!/usr/bin/env bash
# Builds vmd's test guests from Debian packages only (no other downloads), into a cache folder,
# and rebuilds only what is missing:
#
#   vmlinuz           Debian's linux-image-amd64 kernel (apt-get download + dpkg -x)
#   initrd.img        busybox-static + the virtio/isofs modules + an init (see init.sh) that
#                     prints a marker on the serial console, reads a cloud-init NoCloud seed,
#                     prints the network config it received, sets the addresses and serves TCP
#   disk-v1.qcow2     a bootable disk (SYSLINUX on a FAT image, built with mtools, no loop
#   disk-v2.qcow2     mounts) with the same kernel and initrd; each prints its own marker
#   disk-broken.qcow2 boots, then powers itself off at once: a "new version" that never comes up
#
# Usage: vmd/testguest/build.sh [CACHE_DIR]   (default: $VMD_TESTGUEST_DIR or
#        /var/cache/backroom/vmd-testguest). Prints the cache folder on its last line.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-${VMD_TESTGUEST_DIR:-/var/cache/backroom/vmd-testguest}}
# Bump when the recipe changes: a cache made by another recipe is rebuilt.
RECIPE=8
say() { printf 'testguest: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

for bin in apt-get dpkg busybox cpio gzip mkfs.vfat mcopy syslinux qemu-img; do
  command -v "$bin" >/dev/null || fail "$bin not found: run scripts/install-deps"
done
[ -x /bin/busybox ] || fail "/bin/busybox not found: install busybox-static"
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' \
  || ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' \
  || fail "/bin/busybox is not static: install busybox-static"

mkdir -p "$DIR"
chmod 0755 "$DIR"
if [ "$(cat "$DIR/recipe" 2>/dev/null)" != "$RECIPE" ]; then
  rm -f "$DIR"/initrd.img "$DIR"/disk-*.qcow2 "$DIR"/vmlinuz
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The kernel: the package linux-image-amd64 depends on, unpacked once.
if [ ! -s "$DIR/vmlinuz" ] || [ ! -d "$DIR/modules" ]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || fail "cannot tell which kernel package linux-image-amd64 names (run apt-get update)"
  say "fetching $pkg"
  (cd "$WORK" && apt-get download "$pkg" >/dev/null 2>&1) || fail "apt-get download $pkg failed"
  dpkg -x "$WORK"/"$pkg"_*.deb "$WORK/k"
  ver=$(ls "$WORK/k/lib/modules")
  rm -rf "$DIR/modules"
  mkdir -p "$DIR/modules"
  for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
           failover net_failover virtio_net cdrom isofs evdev button; do
    f=$(find "$WORK/k/lib/modules/$ver" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
    [ -n "$f" ] || fail "module $m not found in $pkg"
    case "$f" in *.xz) xz -dc "$f" >"$DIR/modules/$m.ko" ;; *) cp "$f" "$DIR/modules/$m.ko" ;; esac
  done
  cp "$WORK/k/boot/vmlinuz-$ver" "$DIR/vmlinuz.tmp" && mv "$DIR/vmlinuz.tmp" "$DIR/vmlinuz"
  rm -rf "$WORK/k" "$WORK"/*.deb
fi

if [ ! -s "$DIR/initrd.img" ]; then
  say "building initrd.img"
  root="$WORK/initrd"
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt/seed,lib/modules,www,etc}
  cp /bin/busybox "$root/bin/busybox"
  for a in sh cat echo mount umount mkdir sleep ip insmod poweroff reboot sed grep cut tr \
           ls head httpd nc dmesg awk acpid; do
    ln -s busybox "$root/bin/$a"
  done
  cp "$DIR"/modules/*.ko "$root/lib/modules/"
  cp "$HERE/init.sh" "$root/init"
  chmod 0755 "$root/init"
  echo "backroom test guest" >"$root/www/index.html"
  # busybox acpid runs /etc/acpi/PWRF/00000080 on the ACPI power button (bk.acpi=1).
  mkdir -p "$root/etc/acpi/PWRF"
  printf '#!/bin/sh\necho BACKROOM-GUEST-ACPI-POWEROFF >/dev/console\npoweroff -f\n' \
    >"$root/etc/acpi/PWRF/00000080"
  chmod 0755 "$root/etc/acpi/PWRF/00000080"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$DIR/initrd.img.tmp"
  mv "$DIR/initrd.img.tmp" "$DIR/initrd.img"
fi

# disk NAME CMDLINE-EXTRA: a SYSLINUX-bootable FAT disk holding the kernel and initrd.
disk() {
  local name=$1 extra=$2 raw="$WORK/$1.raw"
  [ -s "$DIR/$name.qcow2" ] && return 0
  say "building $name.qcow2"
  truncate -s 96M "$raw"
  mkfs.vfat -n BKBOOT "$raw" >/dev/null
  syslinux --install "$raw"
  cat >"$WORK/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT guest
TIMEOUT 0
PROMPT 0
LABEL guest
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0 quiet $extra
CFG
  MTOOLS_SKIP_CHECK=1 mcopy -i "$raw" "$DIR/vmlinuz" ::vmlinuz
  MTOOLS_SKIP_CHECK=1 mcopy -i "$raw" "$DIR/initrd.img" ::initrd.img
  MTOOLS_SKIP_CHECK=1 mcopy -i "$raw" "$WORK/syslinux.cfg" ::syslinux.cfg
  qemu-img convert -q -f raw -O qcow2 "$raw" "$DIR/$name.qcow2.tmp"
  mv "$DIR/$name.qcow2.tmp" "$DIR/$name.qcow2"
  rm -f "$raw"
}
disk disk-v1 "bk.marker=disk-v1"
disk disk-v2 "bk.marker=disk-v2"
disk disk-broken "bk.marker=disk-broken bk.poweroff=1"

echo "$RECIPE" >"$DIR/recipe"
chmod -R a+rX "$DIR"
echo "$DIR"
