#!/usr/bin/env bash
# Compare read-only compressed file systems for the compressed root mode on
# one tree, same machine, same run: image size, build time (twice, and
# whether the two builds are byte-identical), and the time to read every
# file back through the kernel (loop mount, page cache dropped by
# remounting). Usage (root):
#
#   images/build/testdata/bench-compressed-root.sh [TREE]
#
# TREE defaults to the Debian 12 systemd tree the e2e lab builds. Needs
# squashfs-tools, squashfs-tools-ng and erofs-utils (installed if missing).
set -euo pipefail
tree=${1:-$(ls -d /var/cache/ramboot-lab/debian/*/root | head -n 1)}
work=$(mktemp -d /tmp/bench-croot.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() { mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"; }
trap cleanup EXIT
for p in squashfs-tools squashfs-tools-ng erofs-utils; do
  dpkg-query -W -f='${Status}\n' $p 2>/dev/null | grep -q 'install ok installed' ||
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $p >/dev/null
done
E=1700000000
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
tar --sort=name --format=pax -C "$tree" -cf "$work/tree.tar" .
tree_bytes=$(du -sb --apparent-size "$tree" | cut -f1)
echo "tree $tree: $(( tree_bytes >> 20 )) MiB apparent; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-24s %9s %7s %9s %9s %9s %s\n' format MiB ratio build1_s build2_s read_s identical
bench() { # name fstype cmd (OUT = output file)
  local name=$1 fstype=$2; shift 2
  local a=$work/$name.1 b=$work/$name.2
  local t1 t2 same=no
  t1=$(secs "${@//OUT/$a}")
  t2=$(secs "${@//OUT/$b}")
  cmp -s "$a" "$b" && same=yes
  rm -f "$b"
  local size; size=$(stat -c %s "$a")
  mount -o loop,ro -t "$fstype" "$a" "$mnt"
  local r; r=$(secs sh -c "tar -cf - -C '$mnt' . | cat >/dev/null")
  umount "$mnt"
  printf '%-24s %9.1f %7.3f %9.1f %9.1f %9.2f %s\n' "$name" "$(echo "$size/1048576" | bc -l)" \
    "$(echo "$size/$tree_bytes" | bc -l)" "$t1" "$t2" "$r" "$same"
  rm -f "$a"
}
T="$work/tree.tar"
bench squashfs-zstd9-128k   squashfs sh -c "tar2sqfs -q -f -x -c zstd -X level=9 -b 131072 OUT < $T"
bench squashfs-zstd3-128k   squashfs sh -c "tar2sqfs -q -f -x -c zstd -X level=3 -b 131072 OUT < $T"
bench squashfs-zstd15-128k  squashfs sh -c "tar2sqfs -q -f -x -c zstd -X level=15 -b 131072 OUT < $T"
bench squashfs-zstd15-1m    squashfs mksquashfs "$tree" OUT -comp zstd -b 1M -noappend -all-time $E -mkfs-time $E -quiet -no-progress
bench squashfs-xz-128k      squashfs mksquashfs "$tree" OUT -comp xz -b 128K -noappend -all-time $E -mkfs-time $E -quiet -no-progress
bench erofs-lz4             erofs    mkfs.erofs -zlz4 -T$E -U 00000000-0000-0000-0000-000000000000 --quiet OUT "$tree"
bench erofs-lz4hc           erofs    mkfs.erofs -zlz4hc -T$E -U 00000000-0000-0000-0000-000000000000 --quiet OUT "$tree"
bench erofs-lz4hc-64k       erofs    mkfs.erofs -zlz4hc -C65536 -T$E -U 00000000-0000-0000-0000-000000000000 --quiet OUT "$tree"
# The tmpfs mode's read for comparison: the tree unpacked in a tmpfs.
mount -t tmpfs -o size=$(( tree_bytes * 2 )) tmpfs "$mnt"
tar -xf "$T" -C "$mnt"
printf '%-24s %9s %7s %9s %9s %9.2f\n' tmpfs-unpacked - - - - "$(secs sh -c "tar -cf - -C '$mnt' . | cat >/dev/null")"
umount "$mnt"
