#!/usr/bin/env bash
# Builds the store OS image (`make image`) from Debian 12 packages and our own .debs:
#
#   OUT/backroom-store.img          raw GPT disk for UEFI x86-64 (write it with dd)
#   OUT/backroom-store.img.zst      the same, compressed
#   OUT/backroom-store-V.root       the root slot's image (squashfs), the A/B update artifact
#   OUT/SHA256SUMS                  sha256 of the three
#   OUT/build.env                   version, sizes and build time (the boot test prints them)
#
# The disk: 1 backroom-esp (FAT32, systemd-boot, one kernel + initrd per slot, loader entries
# with boot counting), 2 backroom-root-a and 3 backroom-root-b (read-only squashfs, 1 GiB each;
# B starts empty), 4 backroom-state (ext4 at /var, seeded with the image's /var, grown to fill
# the disk on the first boot). See images/README section in the top-level README.
#
# Two caches, by their inputs: the Debian base (the package list and this recipe) as a tarball
# in $BACKROOM_IMAGE_CACHE (default /var/cache/backroom/images), and the image itself in OUT,
# skipped when the base, the .debs (reproducible: see images/debs.sh), images/rootfs and this
# script are what they were.
#
# Usage: images/build.sh [OUT]     (default images/out; needs root for chroot)
#        BACKROOM_IMAGE_DEBS=DIR   use the .debs in DIR instead of building them
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${1:-$HERE/out}
CACHE=${BACKROOM_IMAGE_CACHE:-/var/cache/backroom/images}
MIRROR=${BACKROOM_IMAGE_MIRROR:-http://deb.debian.org/debian}
# Bump when the base's recipe changes.
BASE_RECIPE=1
say() { printf 'image: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }
started=$(date +%s)
# Timestamps inside the slot image: the commit's time (the same input, the same bytes).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}

[ "$(id -u)" -eq 0 ] || fail "must run as root (it builds a root filesystem with chroot)"
for bin in mmdebstrap mksquashfs sgdisk mkfs.vfat mmd mcopy mke2fs zstd sha256sum unshare; do
  command -v "$bin" >/dev/null || fail "$bin not found: run scripts/install-deps"
done
EFI=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[ -f "$EFI" ] || fail "$EFI not found: install systemd-boot-efi (scripts/install-deps)"

# What the image runs. --no-install-recommends: only what is named and what it depends on.
PACKAGES=(
  linux-image-amd64 initramfs-tools systemd systemd-sysv udev dbus kmod
  iproute2 nftables busybox ca-certificates procps
  containerd runc
  libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils xorriso
  libvirt0 libnftnl11 libmnl0
  cloud-guest-utils fdisk e2fsprogs util-linux
)

mkdir -p "$CACHE" "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/backroom-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. The Debian base, cached by its recipe.
base_key=$(printf '%s\n' "$BASE_RECIPE" "$MIRROR" "${PACKAGES[@]}" | sha256sum | cut -c1-16)
BASE=$CACHE/base-$base_key.tar
if [ ! -s "$BASE" ]; then
  say "building the Debian 12 base ($base_key): mmdebstrap, ${#PACKAGES[@]} packages named"
  include=$(IFS=,; echo "${PACKAGES[*]}")
  # The initramfs must mount a squashfs root: the module is named before the kernel installs.
  mmdebstrap --quiet --variant=apt --include="$include" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools"; printf "squashfs\nvfat\n" >>"$1/etc/initramfs-tools/modules"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$CACHE/base-$base_key.part.tar" "$MIRROR" \
    || fail "mmdebstrap failed (is $MIRROR reachable?)"
  mv "$CACHE/base-$base_key.part.tar" "$BASE"
fi

# 2. Our packages.
if [ -n "${BACKROOM_IMAGE_DEBS:-}" ]; then
  # The newest of each (by version).
  for p in backroom-node backroom-central; do
    newest=$(ls "$BACKROOM_IMAGE_DEBS"/${p}_*.deb 2>/dev/null | sort -V | tail -1)
    [ -n "$newest" ] || fail "no $p package in $BACKROOM_IMAGE_DEBS"
    cp "$newest" "$WORK/"
  done
else
  "$HERE/debs.sh" "$WORK" >/dev/null
fi
node_deb=$(ls "$WORK"/backroom-node_*.deb)
[ "$(echo "$node_deb" | wc -l)" = 1 ] || fail "expected one backroom-node package, found: $node_deb"
PKG_VERSION=$(dpkg-deb -f "$node_deb" Version)
# The OS version: the node package's, unless given.
VERSION=${BACKROOM_OS_VERSION:-$PKG_VERSION}

# 3. The image's key: skip the rest when nothing changed.
key=$( {
  echo "$base_key" "$VERSION"
  sha256sum "$node_deb" | cut -d' ' -f1
  sha256sum "$HERE/build.sh" | cut -d' ' -f1
  (cd "$HERE/rootfs" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)
if [ "$(cat "$OUT/key" 2>/dev/null)" = "$key" ] && [ -s "$OUT/backroom-store.img" ] \
   && (cd "$OUT" && sha256sum --quiet -c SHA256SUMS); then
  say "up to date ($key): $OUT/backroom-store.img"
  exit 0
fi
say "building $VERSION ($key)"
rm -f "$OUT"/key "$OUT"/backroom-store* "$OUT"/SHA256SUMS "$OUT"/build.env
# The packages beside the image are this image's (a folder given in BACKROOM_IMAGE_DEBS may be
# OUT itself).
for d in "$WORK"/backroom-*.deb; do
  [ -e "$OUT/$(basename "$d")" ] || cp "$d" "$OUT/"
done
for d in "$OUT"/backroom-*.deb; do
  [ -e "$WORK/$(basename "$d")" ] || rm -f "$d"
done

# 4. The root tree: the base, our packages, the image's files.
R=$WORK/root
mkdir -p "$R"
tar -C "$R" -xf "$BASE"
cp "$node_deb" "$R/tmp/"
# In a private mount namespace: /proc, /sys and /dev for the packages' scripts, gone on exit.
unshare --mount --fork sh -eu -c '
  R=$1
  mount -t proc proc "$R/proc"; mount -t sysfs sys "$R/sys"; mount --rbind /dev "$R/dev"
  chroot "$R" dpkg -i /tmp/$(basename "$2")
  # The image'"'"'s own files (over the package'"'"'s /etc/default/backroom-node, among others).
  cp -a "$3/." "$R/"
  # Units: the recovery console replaces the login prompts on tty1 and the serial line.
  chroot "$R" systemctl enable backroom-firstboot.service backroom-growstate.service \
    backroom-console@tty1.service backroom-console@ttyS0.service
  chroot "$R" systemctl mask getty@tty1.service serial-getty@ttyS0.service \
    systemd-firstboot.service
  # What a store server has no use for: sound, cameras and TV cards, Wi-Fi and Bluetooth,
  # InfiniBand, industrial sensors, staging drivers (about 100 MiB of modules).
  for k in "$R"/lib/modules/*; do
    rm -rf "$k/kernel/sound" "$k/kernel/drivers/media" "$k/kernel/drivers/net/wireless" \
      "$k/kernel/drivers/bluetooth" "$k/kernel/net/bluetooth" "$k/kernel/drivers/infiniband" \
      "$k/kernel/drivers/iio" "$k/kernel/drivers/staging"
    chroot "$R" depmod -a "$(basename "$k")"
  done
  # The initramfs: built again with the image'"'"'s modules list (squashfs, vfat).
  chroot "$R" update-initramfs -u -k all
' sh "$R" "$node_deb" "$HERE/rootfs" >"$WORK/chroot.log" 2>&1 || { tail -30 "$WORK/chroot.log" >&2; fail "installing into the root failed"; }
rm -f "$R"/tmp/*.deb
# A read-only root: machine-id made at each boot (systemd mounts it), DNS on the state partition (written by first boot's DHCP).
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
ln -sf /var/lib/backroom-os/resolv.conf "$R/etc/resolv.conf"
mkdir -p "$R/boot/efi"
for d in qemu secrets storage; do
  mkdir -p "$R/etc/libvirt/$d" "$R/var/lib/backroom-os/libvirt/$d"
  cp -a "$R/etc/libvirt/$d/." "$R/var/lib/backroom-os/libvirt/$d/"
done
: >"$R/var/lib/backroom-os/resolv.conf"
# The root account stays locked: there is no login on this image (the recovery console is it).
chroot "$R" passwd -l root >/dev/null
printf 'IMAGE_ID=backroom-store\nIMAGE_VERSION=%s\n' "$VERSION" >>"$R/usr/lib/os-release"
echo "$VERSION" >"$R/usr/lib/backroom/os-version"
kver=$(ls "$R/lib/modules" | sort -V | tail -1)
[ -s "$R/boot/vmlinuz-$kver" ] && [ -s "$R/boot/initrd.img-$kver" ] || fail "no kernel or initrd for $kver"

# 5. The root slot (squashfs; /var's contents go to the state partition instead).
ROOTIMG=$OUT/backroom-store-$VERSION.root
# /var/run and /var/lock stay in the root (symlinks into /run: systemd checks them before /var
# is mounted); the rest of /var is the state partition's.
var_out=()
for v in "$R"/var/*; do
  case "$(basename "$v")" in run|lock) ;; *) var_out+=(-e "var/$(basename "$v")") ;; esac
done
mksquashfs "$R" "$ROOTIMG" -comp zstd -Xcompression-level 15 -noappend -quiet -no-progress \
  -wildcards "${var_out[@]}" -e 'proc/*' -e 'sys/*' -e 'dev/*' -e 'tmp/*' -e 'run/*' \
  -mkfs-time "$SOURCE_DATE_EPOCH" -all-time "$SOURCE_DATE_EPOCH" >"$WORK/mksquashfs.log" 2>&1 \
  || { cat "$WORK/mksquashfs.log" >&2; fail "mksquashfs failed"; }
SLOT_MIB=1024
root_bytes=$(stat -c %s "$ROOTIMG")
[ "$root_bytes" -lt $((SLOT_MIB * 1024 * 1024)) ] || fail "the root ($root_bytes bytes) does not fit a $SLOT_MIB MiB slot"

# 6. The state partition: the image's /var, 512 MiB (grown on the first boot).
STATE_MIB=512
mke2fs -q -t ext4 -L backroom-state -d "$R/var" "$WORK/state.img" "${STATE_MIB}M" >/dev/null

# 7. The ESP: systemd-boot, slot A's kernel and initrd, its loader entry (committed: no
# counter; an update writes the other slot's entry with +3 tries and systemd-bless-boot
# commits it once boot-complete.target is reached).
ESP_MIB=256
mkfs.vfat -F 32 -n BKR-ESP -C "$WORK/esp.img" $((ESP_MIB * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
m() { mmd -i "$WORK/esp.img" "$@"; }
c() { mcopy -i "$WORK/esp.img" "$@"; }
m ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/backroom ::/backroom/a ::/backroom/b
c "$EFI" ::/EFI/BOOT/BOOTX64.EFI
c "$EFI" ::/EFI/systemd/systemd-bootx64.efi
c "$R/boot/vmlinuz-$kver" ::/backroom/a/vmlinuz
c "$R/boot/initrd.img-$kver" ::/backroom/a/initrd.img
printf 'default backroom-*\ntimeout 0\nconsole-mode keep\neditor no\n' >"$WORK/loader.conf"
c "$WORK/loader.conf" ::/loader/loader.conf
cat >"$WORK/entry.conf" <<EOF
title Backroom store OS $VERSION (slot A)
version $VERSION
linux /backroom/a/vmlinuz
initrd /backroom/a/initrd.img
options root=/dev/disk/by-partlabel/backroom-root-a rootfstype=squashfs ro backroom.slot=a console=tty1 console=ttyS0,115200 quiet
EOF
c "$WORK/entry.conf" ::/loader/entries/backroom-a.conf

# 8. The disk.
IMG=$WORK/backroom-store.img
total_mib=$((1 + ESP_MIB + 2 * SLOT_MIB + STATE_MIB + 1))
truncate -s "${total_mib}M" "$IMG"
sgdisk --clear \
  -n 1:1M:+${ESP_MIB}M -t 1:ef00 -c 1:backroom-esp \
  -n 2:0:+${SLOT_MIB}M -t 2:8304 -c 2:backroom-root-a \
  -n 3:0:+${SLOT_MIB}M -t 3:8304 -c 3:backroom-root-b \
  -n 4:0:+${STATE_MIB}M -t 4:8310 -c 4:backroom-state \
  "$IMG" >"$WORK/sgdisk.log" 2>&1 || { cat "$WORK/sgdisk.log" >&2; fail "sgdisk failed"; }
put() { dd if="$1" of="$IMG" bs=1M seek="$2" conv=notrunc,sparse status=none; }
put "$WORK/esp.img" 1
put "$ROOTIMG" $((1 + ESP_MIB))
put "$WORK/state.img" $((1 + ESP_MIB + 2 * SLOT_MIB))
mv "$IMG" "$OUT/backroom-store.img"
zstd -q -T0 -10 -f "$OUT/backroom-store.img" -o "$OUT/backroom-store.img.zst"
(cd "$OUT" && sha256sum backroom-store.img backroom-store.img.zst "$(basename "$ROOTIMG")" >SHA256SUMS)
cat >"$OUT/build.env" <<EOF
VERSION=$VERSION
KERNEL=$kver
BUILD_SECONDS=$(( $(date +%s) - started ))
RAW_BYTES=$(stat -c %s "$OUT/backroom-store.img")
RAW_USED_BYTES=$(( $(du -B1 "$OUT/backroom-store.img" | cut -f1) ))
ZST_BYTES=$(stat -c %s "$OUT/backroom-store.img.zst")
ROOT_BYTES=$root_bytes
ROOT_FILE=$(basename "$ROOTIMG")
EOF
echo "$key" >"$OUT/key"
say "done in $(( $(date +%s) - started )) s: $OUT/backroom-store.img ($(du -h --apparent-size "$OUT/backroom-store.img" | cut -f1) raw, $(du -h "$OUT/backroom-store.img.zst" | cut -f1) compressed)"
