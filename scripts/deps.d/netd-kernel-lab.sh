#!/usr/bin/env bash
# The kernel lab for netd's VLAN tests: virtme-ng (PyPI, in a venv) and Debian's own kernel
# (linux-image-amd64), unpacked under /opt/backroom/kernel-lab so the guest sees its modules.
# Idempotent: does nothing when both are in place.
set -euo pipefail
LAB=/opt/backroom/kernel-lab
say() { printf 'netd-kernel-lab: %s\n' "$*"; }
mkdir -p "$LAB"

if [ ! -x "$LAB/venv/bin/vng" ]; then
  say "installing virtme-ng into $LAB/venv"
  /usr/bin/python3 -m venv "$LAB/venv"
  "$LAB/venv/bin/pip" install --quiet --disable-pip-version-check 'virtme-ng==1.42'
fi

pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { say "cannot tell which kernel linux-image-amd64 names"; exit 1; }
ver=${pkg#linux-image-}
if [ ! -f "$LAB/kernel/boot/vmlinuz-$ver" ] || [ ! -d "$LAB/kernel/lib/modules/$ver" ]; then
  say "fetching $pkg"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg")
  rm -rf "$LAB/kernel.new"
  dpkg -x "$tmp"/"$pkg"_*.deb "$LAB/kernel.new"
  rm -rf "$tmp" "$LAB/kernel"
  mv "$LAB/kernel.new" "$LAB/kernel"
fi
ln -sfn "boot/vmlinuz-$ver" "$LAB/kernel/vmlinuz"
say "ready: $LAB/kernel/boot/vmlinuz-$ver"
