#!/usr/bin/env bash
# Make this Debian 12 host ready for vnfkit, as root: Debian packages, the kernel-headers
# link BCC needs, and the bpffs and tracefs mounts. Idempotent: when everything is in place
# it only checks, in well under a second. The Makefile runs it before `demo` and `test`.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup-host.sh: vnfkit loads BPF programs and makes network namespaces: run as root" >&2
    exit 1
fi

arch=$(dpkg --print-architecture)
# The one list of Debian packages vnfkit uses (Python packages are pinned in requirements.txt).
packages=(
    clang llvm libbpf-dev libxdp-dev libelf-dev zlib1g-dev pkg-config gcc make
    bpftool iproute2 iputils-ping ethtool tshark nftables iptables iperf3
    python3 python3-venv python3-dev python3-bpfcc
    dpdk-dev  # dpdk-testpmd and its af_packet/af_xdp drivers: a peer in the benchmark suite
    "linux-headers-$arch"
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host.sh: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# BCC compiles against /lib/modules/$(uname -r)/build. This kernel ships no headers, so point
# the link at the newest Debian linux-headers tree (6.1): close enough for BCC's use.
build="/lib/modules/$(uname -r)/build"
if [ ! -e "$build" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$hdr" ]; then
        echo "setup-host.sh: no /usr/src/linux-headers-*-$arch after installing linux-headers-$arch" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$build")"
    ln -sfn "$hdr" "$build"
    echo "setup-host.sh: linked $build -> $hdr"
fi

mountpoint -q /sys/fs/bpf || { mount -t bpf bpf /sys/fs/bpf && echo "setup-host.sh: mounted bpffs"; }
mountpoint -q /sys/kernel/tracing || { mount -t tracefs tracefs /sys/kernel/tracing && echo "setup-host.sh: mounted tracefs"; }
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
