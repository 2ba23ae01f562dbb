#!/usr/bin/env bash
# Boot time of ramboot against the standard stack (dnsmasq DHCP+TFTP+RA and
# busybox httpd, ../shared/lab/pxe-lab.sh) on this machine, in one run,
# alternating, BIOS mode. Prints each run and the median ratio.
#
#   sudo provisioner/internal/lab/bench-vs-dnsmasq.sh [ROUNDS]
#
# dnsmasq: seconds from QEMU start to its test init's first line
# (LAB-INIT-OK). ramboot: seconds from QEMU start to the agent's first line
# (init started) and to the head accepting its report (booted).
set -euo pipefail
cd "$(dirname "$0")/../../.."
rounds=${1:-3}
lab=${PXE_LAB:-../shared/lab/pxe-lab.sh}
[[ -x $lab || -f $lab ]] || { echo "no $lab" >&2; exit 2; }
export LAB_CACHE=${LAB_CACHE:-/var/cache/ramboot-lab/pxe-lab}
bash "$lab" setup >/dev/null 2>&1
go build -o /tmp/ramboot-demo ./provisioner/internal/lab/demo
dn=() ri=() rb=()
for i in $(seq "$rounds"); do
  out=$(bash "$lab" demo bios 2>&1) || { echo "$out" | tail -5 >&2; exit 1; }
  dn+=("$(grep -o "marker [0-9.]*s" <<<"$out" | head -1 | tr -dc '0-9.')")
  out=$(/tmp/ramboot-demo 2>&1) || { echo "$out" | tail -5 >&2; exit 1; }
  ri+=("$(sed -n 's/^init (the agent) started \([0-9.]*\) s.*/\1/p' <<<"$out")")
  rb+=("$(sed -n 's/^PASS: .* \([0-9.]*\) s after QEMU started/\1/p' <<<"$out")")
  echo "round $i: dnsmasq init ${dn[-1]} s; ramboot init ${ri[-1]} s, booted ${rb[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
md=$(median "${dn[@]}") mi=$(median "${ri[@]}") mb=$(median "${rb[@]}")
echo "median: dnsmasq init $md s; ramboot init $mi s (ratio $(awk "BEGIN{printf \"%.2f\", $mi/$md}")), booted $mb s (ratio $(awk "BEGIN{printf \"%.2f\", $mb/$md}"))"
