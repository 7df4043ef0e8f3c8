#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, and prepares the kernel mounts.
# Idempotent: does nothing when everything is already there. Run as root on Debian 12.
set -euo pipefail

PACKAGES=(
    # build: BPF programs (clang-19 + libbpf via libbpf-sys) and C deps
    clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config make gcc
    # datapath tools and test traffic
    bpftool iproute2 iputils-ping iperf3 socat iptables procps jq python3
    # podman on the cilium-cni network (tests/tests/podman.rs, deploy/podman/): podman 4.3 with
    # the CNI backend, runc (crun fails on cgroup-hybrid hosts), an image from busybox-static
    podman containernetworking-plugins runc busybox-static
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust toolchain components used by CI.
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi

# bpffs for pinned maps and links.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf || echo "deps: warning: cannot mount bpffs at /sys/fs/bpf" >&2
fi
