#!/usr/bin/env bash
# Push benchmark: ramboot image push to ramboot's SFTP server against
# OpenSSH's sftp to OpenSSH's sshd, same file, same run, loopback.
# Not run in CI. Needs root and openssh-client. When sshd is not
# installed, it unpacks Debian's openssh-server (and libwrap0) into /tmp
# with `apt-get download` and `dpkg -x`: no service is installed or started.
#
#   sudo images/push/testdata/bench-vs-openssh.sh [ITERATIONS] [MIB]
set -euo pipefail
n=${1:-5}
export RAMBOOT_BENCH_MIB=${2:-256}
cd "$(dirname "$0")/../../.."
sshd=$(command -v sshd || true)
if [ -z "$sshd" ]; then
	d=/tmp/rb-sshd
	if [ ! -x "$d/root/usr/sbin/sshd" ]; then
		mkdir -p "$d" && (cd "$d" && apt-get download -q openssh-server libwrap0 >/dev/null 2>&1 && for p in *.deb; do dpkg -x "$p" root; done)
	fi
	sshd=$d/root/usr/sbin/sshd
	export LD_LIBRARY_PATH=$d/root/usr/lib/x86_64-linux-gnu
fi
echo "sshd: $sshd ($("$sshd" -V 2>&1 | head -n1 || true)); $(ssh -V 2>&1); $(nproc) cores"
RAMBOOT_SSHD=$sshd go test -run '^$' -bench BenchmarkPushVsOpenSSH -benchtime "${n}x" -timeout 30m ./images/push/
