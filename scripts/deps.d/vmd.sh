#!/usr/bin/env bash
# Builds vmd's test guests (kernel, busybox initrd, bootable disks) from Debian packages into
# /var/cache/backroom/vmd-testguest, only when missing (vmd/testguest/build.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
vmd/testguest/build.sh >/dev/null
echo "deps.d/vmd.sh: test guests ready in ${VMD_TESTGUEST_DIR:-/var/cache/backroom/vmd-testguest}"
