#!/usr/bin/env bash
# Build benchmark on a real root tree, in one run, alternating:
#   ramboot image build TREE   against   find . | sort | cpio -o -H newc | zstd -T0 -3
# plus the no-op rebuild. Not run in CI (it downloads ~100 MB of Debian
# packages once and takes minutes). Needs root, debootstrap, cpio, zstd.
#
#   sudo images/build/testdata/bench-real-tree.sh [ROUNDS] [TREE]
#
# TREE (default /tmp/rb-bench/tree) is made once: debootstrap --variant=minbase
# bookworm, plus a copy of this machine's /usr/share as usr/share-copy, plus
# the lab's Debian kernel as boot/vmlinuz-*.
set -euo pipefail
rounds=${1:-5}
tree=${2:-/tmp/rb-bench/tree}
work=$(mktemp -d /tmp/rb-bench-run.XXXXXX)
trap 'rm -rf "$work"' EXIT
export LC_ALL=C
cd "$(dirname "$0")/../../.."

if [ ! -e "$tree/.complete" ]; then
	rm -rf "$tree"
	debootstrap --variant=minbase bookworm "$tree" http://deb.debian.org/debian >/dev/null
	cp -a /usr/share "$tree/usr/share-copy"
	k=$(ls /var/cache/ramboot-lab/kernel/*/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
	if [ -z "$k" ]; then k=$(ls /boot/vmlinuz-* | head -n1); fi
	cp "$k" "$tree/boot/"
	touch "$tree/.complete"
fi
go build -trimpath -o "$work/ramboot" ./provisioner/cmd/ramboot
echo "tree: $tree, $(du -sb "$tree" | cut -f1) bytes, $(find "$tree" | wc -l) entries; $(nproc) cores"

t() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
rb() { "$work/ramboot" image build "$tree" --name bench --no-cache --no-default-excludes -q -o json --state-dir "$work/state" >"$work/rb.json"; }
std() { (cd "$tree" && find . | sort | cpio -o -H newc --quiet | zstd -T0 -3 -q -f -o "$work/std.cpio.zst"); }

rb; std # warm the page cache
declare -a R S
for i in $(seq "$rounds"); do
	R+=("$(t rb)")
	S+=("$(t std)")
	echo "round $i: ramboot ${R[-1]} s, cpio|zstd ${S[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mr=$(median "${R[@]}"); ms=$(median "${S[@]}")
rsize=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest"]["rootfs"]["size"])' "$work/rb.json")
ssize=$(stat -c %s "$work/std.cpio.zst")
echo "median: ramboot $mr s, cpio|zstd $ms s, time ratio $(echo "scale=3; $mr / $ms" | bc)"
echo "size: ramboot $rsize bytes, cpio|zstd $ssize bytes, size ratio $(echo "scale=3; $rsize / $ssize" | bc)"

# The no-op rebuild: build once with the cache, then time the rebuild.
noop() { "$work/ramboot" image build "$tree" --name noop -q --state-dir "$work/state" >/dev/null; }
noop
declare -a N
for i in $(seq "$rounds"); do
	N+=("$(t noop)")
done
echo "no-op rebuild: median $(median "${N[@]}") s (of ${N[*]})"
