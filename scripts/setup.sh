#!/usr/bin/env bash
# Installs every build, test and demo dependency of netsteer from Debian packages.
# Idempotent: a second run installs nothing and prints only a one-line summary.
set -euo pipefail

PKGS=(
  # toolchain
  build-essential cmake pkg-config git clang llvm libclang-rt-14-dev
  # libraries
  libbpf-dev libelf-dev zlib1g-dev bpftool libspdlog-dev libfmt-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libcli11-dev libmnl-dev libcurl4-openssl-dev libseccomp-dev
  # runtime / test tools
  iproute2 iptables nftables python3 python3-pytest curl socat iperf3 procps kmod util-linux openssl
  # DNS capture tests: a real resolver (dnsmasq) and the conntrack table reader
  dnsmasq-base conntrack
  # e2e: a real container runtime driven over CRI (tests/e2e), and deploy/ validation
  containerd runc containernetworking-plugins python3-grpcio python3-grpc-tools busybox-static
  yamllint python3-prometheus-client
  # the image (scripts/image.sh: catatonit is its pause process) and the DaemonSet e2e (manifests)
  catatonit python3-yaml
  # vm: Debian kernels under qemu (scripts/vm)
  qemu-system-x86 cpio xz-utils
  # bench/ (its servers are started by the bench only; see the policy-rc.d guard below)
  wrk nginx-light haproxy dnsperf
  # bench/ counting: system calls and context switches per connection (--syscalls), exec times
  linux-perf strace hyperfine
  # the .deb (scripts/deb.sh: dpkg-shlibdeps) and its test (tests/e2e/test_deb.py: a minbase
  # chroot made by debootstrap, systemd-analyze verify on the unit)
  dpkg-dev debootstrap systemd
)

if [[ $(id -u) -ne 0 ]]; then
  echo "setup.sh: must run as root (it installs packages with apt-get)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages with services (nginx, haproxy, containerd) must not start them on this machine.
  guard=/usr/sbin/policy-rc.d
  [[ -e $guard ]] || { printf '#!/bin/sh\nexit 101\n' >"$guard"; chmod +x "$guard"; trap 'rm -f "$guard"' EXIT; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup.sh: all ${#PKGS[@]} packages present"
fi

# deploy/ validation uses node + the npm package kubernetes-models (offline JSON schemas).
# Debian's nodejs/npm unless a node with npm is already installed.
if ! command -v npm >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
bash "$(dirname "$0")/setup-npm.sh"

# bpffs: the agent mounts it too, but tools like bpftool want it early.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpffs /sys/fs/bpf
fi
