#!/bin/sh
# Write a minimal root filesystem tarball (busybox-static and its applet links) to "$1".
set -eu
out=$1
busybox=$(command -v busybox)
# The image has no libc: only a statically linked busybox (Debian's busybox-static) runs in it.
if ldd "$busybox" >/dev/null 2>&1; then echo "rootfs.sh: $busybox is dynamically linked; install busybox-static" >&2; exit 1; fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in sh echo cat ls sleep true false env; do ln -s busybox "$root/bin/$applet"; done
# Fixed owner and time so the same busybox gives the same layer.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$out" .
