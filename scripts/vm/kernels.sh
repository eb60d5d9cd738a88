#!/usr/bin/env bash
# Fetches the Debian kernels of the VM matrix into a cache outside the repo and prepares each:
#   $CACHE/<name>/vmlinuz, $CACHE/<name>/modules/*.ko (what the VM needs, in load order),
#   $CACHE/<name>/version
# Kernels: 5.10 (bullseye), 6.1 and 6.12 (bookworm). bullseye is read through a private apt
# config (own sources, lists and cache) so the machine's own apt setup is untouched.
# Usage: kernels.sh [NAME...]   (default: all)   Prints one line per kernel ready.
set -euo pipefail
CACHE=${NETSTEER_VM_CACHE:-/var/cache/netsteer/vm}
mkdir -p "$CACHE"
# name  suite     package pattern (newest match wins)
MATRIX=(
  "5.10 bullseye ^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$"
  "6.1  bookworm ^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"
  "6.12 bookworm ^linux-image-6\.12\.[0-9.]+\+deb12-amd64-unsigned$"
)
# What the VM's init loads (with dependencies); built-ins are skipped.
# sctp: the SCTP test (sk_lookup does not see SCTP; it must pass untouched and be counted).
MODULES=(virtio_pci virtio_blk 9pnet_virtio 9p veth sch_ingress cls_bpf ipv6 sctp)

apt_private() {  # apt for one suite with its own state under $CACHE/apt-<suite>
  local suite=$1; shift
  local d=$CACHE/apt-$suite
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  if [[ ! -f $d/sources.list ]]; then
    printf 'deb http://deb.debian.org/debian %s main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
      "$suite" "$suite" >"$d/sources.list"
  fi
  "$@" -o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root
}

want=("$@")
for row in "${MATRIX[@]}"; do
  read -r name suite pattern <<<"$row"
  if ((${#want[@]})) && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  out=$CACHE/$name
  # A cache prepared for another module list is prepared again.
  if [[ -f $out/ready && $(cat "$out/modules.want" 2>/dev/null) == "${MODULES[*]}" ]]; then
    echo "kernel $name: $(cat "$out/version") (cached)"; continue
  fi
  lists=$CACHE/apt-$suite/lists
  if [[ -z $(ls "$lists" 2>/dev/null | grep -v partial || true) ]]; then
    apt_private "$suite" apt-get update -qq
  fi
  pkg=$(apt_private "$suite" apt-cache pkgnames linux-image- | grep -E "$pattern" | sort -V | tail -n1)
  [[ -n $pkg ]] || { echo "kernels.sh: no package matching $pattern in $suite" >&2; exit 1; }
  rm -rf "$out" && mkdir -p "$out/modules"
  (cd "$out" && apt_private "$suite" apt-get download -qq "$pkg")
  tree=$out/tree
  dpkg-deb -x "$out"/"$pkg"_*.deb "$tree"
  ver=$(ls "$tree/lib/modules")
  cp "$tree/boot/vmlinuz-$ver" "$out/vmlinuz"
  depmod -b "$tree" "$ver"
  : >"$out/modules.order"
  for m in "${MODULES[@]}"; do
    modprobe -d "$tree" -S "$ver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' |
      while read -r ko; do
        base=$(basename "$ko"); base=${base%.xz}; base=${base%.zst}
        grep -qx "$base" "$out/modules.order" && continue
        case $ko in
          *.xz) xz -dc "$ko" >"$out/modules/$base" ;;
          *.zst) zstd -qdc "$ko" >"$out/modules/$base" ;;
          *) cp "$ko" "$out/modules/$base" ;;
        esac
        echo "$base" >>"$out/modules.order"
      done
  done
  rm -rf "$tree" "$out"/*.deb
  echo "$ver" >"$out/version"
  echo "${MODULES[*]}" >"$out/modules.want"
  touch "$out/ready"
  echo "kernel $name: $ver ($(wc -l <"$out/modules.order") modules)"
done
