#!/usr/bin/env bash
# DHCP reply latency with a real client, in one run:
# ramboot serve built from BASE (default main), ramboot serve built from
# this tree, and dnsmasq, each answering one reserved MAC on a veth pair
# between two network namespaces this script creates (nothing leaves them).
# The client is dhcplat (nclient4 on a raw socket, like udhcpc) in the
# client namespace: it times each DISCOVER->OFFER and REQUEST->ACK.
#
#   sudo provisioner/internal/lab/dhcp-latency.sh [ROUNDS] [BASE]
set -euo pipefail
cd "$(dirname "$0")/../../.."
rounds=${1:-40}
base=${2:-main}
work=$(mktemp -d "${RB_WORK:-/var/tmp}/rb-dhcplat.XXXXXX") # state on a real disk, not tmpfs
srv=rbdls$$ cli=rbdlc$$
mac=52:54:00:79:00:0a
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  ip netns del "$srv" 2>/dev/null || true
  ip netns del "$cli" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
echo "building ramboot ($base and this tree) into $work" >&2
mkdir -p "$work/base"
git archive "$base" | tar -x -C "$work/base"
(cd "$work/base" && CGO_ENABLED=0 go build -o "$work/ramboot-base" ./provisioner/cmd/ramboot)
CGO_ENABLED=0 go build -o "$work/ramboot-new" ./provisioner/cmd/ramboot
CGO_ENABLED=0 go build -o "$work/dhcplat" ./provisioner/internal/lab/dhcplat
printf 'agent' > "$work/agent"; chmod +x "$work/agent"

ip netns add "$srv"; ip netns add "$cli"
ip -n "$srv" link add srv0 type veth peer name cli0 netns "$cli"
ip -n "$srv" addr add 10.79.0.1/24 dev srv0
ip -n "$srv" link set srv0 up; ip -n "$srv" link set lo up
ip -n "$cli" link set cli0 address "$mac"; ip -n "$cli" link set cli0 up; ip -n "$cli" link set lo up

start_ramboot() { # name binary
  local st="$work/state-$1"
  cat > "$work/$1.yaml" <<YAML
interface: srv0
state_dir: $st
tftp: {enabled: false}
ra: {enabled: false}
http: {port: 8080}
dhcp: {detect_rivals: false}
agent: {binary: $work/agent}
YAML
  ip netns exec "$srv" "$2" serve --config "$work/$1.yaml" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do "$2" node list --state-dir "$st" >/dev/null 2>&1 && break; sleep 0.1; done
  "$2" node add n1 --mac "$mac" --ip 10.79.0.10 --state-dir "$st" >/dev/null
}
stop_last() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }

run() { # label start-command...
  local label=$1; shift
  "$@"
  sleep 0.5
  ip netns exec "$cli" "$work/dhcplat" -i cli0 -n "$rounds" > "$work/$label.txt"
  stop_last
}
run "ramboot-$base" start_ramboot base "$work/ramboot-base"
run "ramboot-new" start_ramboot new "$work/ramboot-new"
start_dnsmasq() {
  ip netns exec "$srv" dnsmasq -d --port=0 --interface=srv0 --bind-interfaces --no-ping \
    --dhcp-range=10.79.0.10,static,255.255.255.0 --dhcp-host="$mac,10.79.0.10" \
    --dhcp-leasefile="$work/leases" --pid-file="$work/dnsmasq.pid" >"$work/dnsmasq.log" 2>&1 &
  pids+=($!)
}
run dnsmasq start_dnsmasq

stats() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '
  {a[NR]=$1} END {printf "n=%d min %.1f median %.1f p90 %.1f max %.1f ms", NR, a[1]/1000, a[int((NR+1)/2)]/1000, a[int(NR*0.9+0.5)]/1000, a[NR]/1000}'; }
for l in "ramboot-$base" ramboot-new dnsmasq; do
  for k in offer ack; do
    printf '%-16s %-5s %s\n' "$l" "$k" "$(awk -v k=$k '$1==k {print $2}' "$work/$l.txt" | tr '\n' ' ' | stats)"
  done
done
