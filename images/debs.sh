#!/usr/bin/env bash
# Builds Backroom's two Debian 12 packages from the workspace's release binaries:
#
#   backroom-node_<version>_amd64.deb     netd, vmd, nodeagent, nodectl; their systemd units (and
#                                         the recovery console's, not enabled); sysusers.d;
#                                         /etc/default/backroom-node
#   backroom-central_<version>_amd64.deb  central, centralctl; backroom-central.service
#
# They are the supported install on a plain Debian 12 server (`apt install ./backroom-node_*.deb`)
# and what the store OS image is made of. The packages are reproducible: the same binaries give
# the same bytes (SOURCE_DATE_EPOCH is the commit's time), so the image's cache key can be their
# sha256.
#
# Usage: images/debs.sh OUTDIR        builds `cargo build --release` first
#        BACKROOM_DEB_BINS=DIR images/debs.sh OUTDIR   packages the binaries in DIR as they are
# Prints the two package paths, one per line.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: images/debs.sh OUTDIR}
say() { printf 'debs: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }
for bin in dpkg-deb dpkg-shlibdeps git; do
  command -v "$bin" >/dev/null || fail "$bin not found: run scripts/install-deps"
done

NODE_BINS=(netd vmd nodeagent nodectl)
CENTRAL_BINS=(central centralctl)
if [ -n "${BACKROOM_DEB_BINS:-}" ]; then
  BINS=$BACKROOM_DEB_BINS
else
  say "cargo build --release (the six binaries)"
  args=()
  for b in "${NODE_BINS[@]}" "${CENTRAL_BINS[@]}"; do args+=(--bin "$b"); done
  (cd "$ROOT" && ${CARGO:-cargo} build --release --quiet "${args[@]}") || fail "cargo build failed"
  BINS=$ROOT/target/release
fi
for b in "${NODE_BINS[@]}" "${CENTRAL_BINS[@]}"; do
  [ -x "$BINS/$b" ] || fail "$BINS/$b is missing"
done

# The version: the workspace's, then the commit (its date and id) so that a newer build sorts
# after an older one; ".dirty" when the tree has changes that are not committed.
base=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
commit_time=$(git -C "$ROOT" log -1 --format=%ct)
stamp=$(date -u -d "@$commit_time" +%Y%m%d%H%M%S)
sha=$(git -C "$ROOT" rev-parse --short=10 HEAD)
dirty=
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || dirty=.dirty
VERSION=${BACKROOM_DEB_VERSION:-$base+git$stamp.$sha$dirty}
export SOURCE_DATE_EPOCH=$commit_time

mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The shared libraries a set of binaries links, as Debian dependencies (dpkg-shlibdeps wants a
# debian/control beside it).
shlibs() {
  mkdir -p "$WORK/shlibs/debian"
  printf 'Source: backroom\n\nPackage: x\nArchitecture: amd64\n' >"$WORK/shlibs/debian/control"
  (cd "$WORK/shlibs" && dpkg-shlibdeps -O "$@" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

# package NAME DESCRIPTION DEPENDS: $WORK/NAME is the tree; writes OUT/NAME_VERSION_amd64.deb.
package() {
  local name=$1 summary=$2 depends=$3 tree=$WORK/$1
  local size
  size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
  cat >"$tree/DEBIAN/control" <<EOF
Package: $name
Version: $VERSION
Architecture: amd64
Maintainer: Backroom <backroom@localhost>
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Homepage: file:///usr/share/doc/backroom/README.md
Description: $summary
EOF
  find "$tree" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  local deb=$OUT/${name}_${VERSION}_amd64.deb
  dpkg-deb --root-owner-group -Zgzip --build "$tree" "$deb" >/dev/null
  printf '%s\n' "$deb"
}

# backroom-node
t=$WORK/backroom-node
install -d "$t/DEBIAN" "$t/usr/bin" "$t/usr/lib/systemd/system" "$t/usr/lib/sysusers.d" \
  "$t/etc/default" "$t/usr/share/doc/backroom"
for b in "${NODE_BINS[@]}"; do install -m 0755 "$BINS/$b" "$t/usr/bin/$b"; done
strip --strip-debug "$t"/usr/bin/*
for u in netd vmd nodeagent backroom-console@; do
  install -m 0644 "$ROOT/packaging/systemd/$u.service" "$t/usr/lib/systemd/system/"
done
install -m 0644 "$ROOT/packaging/sysusers.d/backroom.conf" "$t/usr/lib/sysusers.d/"
install -m 0644 "$ROOT/packaging/default/backroom-node" "$t/etc/default/"
install -m 0644 "$ROOT/README.md" "$t/usr/share/doc/backroom/README.md"
echo /etc/default/backroom-node >"$t/DEBIAN/conffiles"
cat >"$t/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Makes the `backroom` group, then enables (and, on a running system, starts) the daemons.
# The recovery console (backroom-console@tty1) is not enabled here: it takes over a terminal.
set -e
if [ "$1" = configure ]; then
  systemd-sysusers backroom.conf
  systemctl enable netd.service vmd.service nodeagent.service >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl start netd.service vmd.service nodeagent.service || true
  fi
fi
EOF
cat >"$t/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# On removal the daemons stop; containers, networks and VMs are left as they are.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop nodeagent.service vmd.service netd.service || true
fi
if [ "$1" = remove ]; then
  systemctl disable nodeagent.service vmd.service netd.service >/dev/null 2>&1 || true
fi
EOF
chmod 0755 "$t/DEBIAN/postinst" "$t/DEBIAN/prerm"
node_libs=$(shlibs "${t}"/usr/bin/*)
package backroom-node "Backroom store node: netd, vmd, nodeagent and nodectl
 The daemons of a Backroom store server: netd (VLANs, bridges, the nftables firewall), vmd
 (KVM/libvirt VMs), nodeagent (runs the store profile, reports to central) and nodectl (the
 local command line and the recovery console)." \
  "$node_libs, systemd, containerd, runc, nftables, iproute2, libvirt-daemon-system, libvirt-daemon-driver-qemu, qemu-system-x86, qemu-utils, xorriso"

# backroom-central
t=$WORK/backroom-central
install -d "$t/DEBIAN" "$t/usr/bin" "$t/usr/lib/systemd/system" "$t/usr/lib/sysusers.d" \
  "$t/etc/default" "$t/usr/share/doc/backroom-central"
for b in "${CENTRAL_BINS[@]}"; do install -m 0755 "$BINS/$b" "$t/usr/bin/$b"; done
strip --strip-debug "$t"/usr/bin/*
install -m 0644 "$ROOT/packaging/systemd/backroom-central.service" "$t/usr/lib/systemd/system/"
install -m 0644 "$ROOT/packaging/sysusers.d/backroom-central.conf" "$t/usr/lib/sysusers.d/"
install -m 0644 "$ROOT/packaging/default/backroom-central" "$t/etc/default/"
install -m 0644 "$ROOT/README.md" "$t/usr/share/doc/backroom-central/README.md"
echo /etc/default/backroom-central >"$t/DEBIAN/conffiles"
cat >"$t/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Makes the backroom-central user, then enables (and, on a running system, starts) central.
set -e
if [ "$1" = configure ]; then
  systemd-sysusers backroom-central.conf
  systemctl enable backroom-central.service >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl start backroom-central.service || true
  fi
fi
EOF
cat >"$t/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop backroom-central.service || true
fi
if [ "$1" = remove ]; then
  systemctl disable backroom-central.service >/dev/null 2>&1 || true
fi
EOF
chmod 0755 "$t/DEBIAN/postinst" "$t/DEBIAN/prerm"
central_libs=$(shlibs "${t}"/usr/bin/*)
package backroom-central "Backroom central: the HQ plane stores enroll with and report to
 central serves the node port stores connect to (mTLS after enrollment) and the operator port
 centralctl uses; it keeps its CA, tokens and the fleet in SQLite or PostgreSQL." \
  "$central_libs, systemd"
