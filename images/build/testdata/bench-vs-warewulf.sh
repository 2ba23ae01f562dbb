#!/usr/bin/env bash
# Build benchmark against Warewulf's `wwctl image build` on the same tree,
# alternating, same run. Not run in CI. Needs root, a wwctl binary built
# out of tree (never committed), pigz (Warewulf's compressor of choice;
# it falls back to gzip), and the tree of bench-real-tree.sh.
#
# Building wwctl (the search tool's fetch brings github:warewulf/warewulf):
#   git -C <mirror> archive HEAD | tar -x -C /tmp/rb-ww && cd /tmp/rb-ww
#   make config PREFIX=/tmp/rb-ww/inst
#   go build -tags "containers_image_openpgp containers_image_ostree" -o /tmp/rb-ww/wwctl-bin ./cmd/wwctl
#
#   sudo images/build/testdata/bench-vs-warewulf.sh [ROUNDS] [TREE] [WWCTL]
set -euo pipefail
rounds=${1:-3}
tree=${2:-/tmp/rb-bench/tree}
wwctl=${3:-/tmp/rb-ww/wwctl-bin}
ww=$(dirname "$wwctl")/inst   # the PREFIX wwctl was configured with
work=$(mktemp -d /tmp/rb-bench-ww.XXXXXX)
root=$ww/var/warewulf/chroots/bench/rootfs
cleanup() { mountpoint -q "$root" && umount "$root"; rm -rf "$work"; }
trap cleanup EXIT
cd "$(dirname "$0")/../../.."
mkdir -p "$root" "$ww/etc/warewulf"
touch "$ww/etc/warewulf/nodes.conf"
mountpoint -q "$root" || mount --bind "$tree" "$root"   # same file system: Warewulf skips other devices
go build -trimpath -o "$work/ramboot" ./provisioner/cmd/ramboot
echo "tree: $tree, $(du -sb "$tree" | cut -f1) bytes; wwctl $wwctl; compressor $(command -v pigz || command -v gzip); $(nproc) cores"

t() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
rb() { "$work/ramboot" image build "$tree" --name bench --no-cache --no-default-excludes -q --state-dir "$work/state" >/dev/null; }
wwb() { "$wwctl" --emptyconf image build --force bench >/dev/null 2>&1; }
wwnoop() { "$wwctl" --emptyconf image build bench >/dev/null 2>&1; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

rb; wwb
declare -a R W N
for i in $(seq "$rounds"); do
	R+=("$(t rb)")
	W+=("$(t wwb)")
	N+=("$(t wwnoop)")
	echo "round $i: ramboot ${R[-1]} s, wwctl image build --force ${W[-1]} s, wwctl image build (no change) ${N[-1]} s"
done
mr=$(median "${R[@]}"); mw=$(median "${W[@]}")
echo "median: ramboot $mr s, wwctl $mw s, time ratio $(echo "scale=3; $mr / $mw" | bc); wwctl rebuild without change: median $(median "${N[@]}") s"
echo "size: ramboot $(du -b "$work"/state/images/blobs/sha256/* | sort -n | tail -n1 | cut -f1) bytes, wwctl $(stat -c %s "$ww/var/warewulf/provision/images/bench.img.gz") bytes (gzip)"
