#!/bin/bash
# setup.sh up|down — netns udpx-pod (10.77.0.1, fd00:77::1) <-veth-> udpx-rem (10.77.0.2, fd00:77::2) + dnsmasq in udpx-rem
set -e
D=$(cd "$(dirname "$0")" && pwd); PIN=/sys/fs/bpf/udpexp
if [ "$1" = up ]; then
  ip netns add udpx-pod; ip netns add udpx-rem
  ip link add vp netns udpx-pod type veth peer name vr netns udpx-rem
  P="ip -n udpx-pod"; R="ip -n udpx-rem"
  $P link set lo up; $R link set lo up; $P link set vp up; $R link set vr up
  $P addr add 10.77.0.1/24 dev vp; $P addr add fd00:77::1/64 dev vp nodad
  $R addr add 10.77.0.2/24 dev vr; $R addr add fd00:77::2/64 dev vr nodad
  ip netns exec udpx-pod sysctl -qw net.ipv4.conf.vp.accept_local=1
  for f in "" -6; do
    $P $f rule add fwmark 0x539/0xfff lookup main pref 99
    $P $f rule add ipproto udp dport 53 lookup 133 pref 100
  done
  $P route add local 0.0.0.0/0 dev lo src 10.77.0.1 table 133
  $P -6 route add local ::/0 dev lo table 133
  ip netns exec udpx-rem dnsmasq -k --no-resolv --no-hosts -C /dev/null --bind-interfaces \
     --listen-address=10.77.0.2,fd00:77::2 --except-interface=lo --address=/test.example/10.77.0.2 \
     --address=/test.example/fd00:77::2 --pid-file= --user=root --dns-forward-max=2000 >"$D/dnsmasq.log" 2>&1 &
  echo $! > "$D/dnsmasq.pid"
  # a second server with a big receive buffer for loss measurements (dnsmasq drops bursts itself)
  $R addr add 10.77.0.3/24 dev vr; $R addr add fd00:77::3/64 dev vr nodad
  ip netns exec udpx-rem python3 "$D/fastdns.py" 10.77.0.3 fd00:77::3 >"$D/fastdns.log" 2>&1 &
  echo $! > "$D/fastdns.pid"
  "$D/udpx_load" /run/netns/udpx-pod $PIN
else
  for p in dnsmasq fastdns; do
    [ -f "$D/$p.pid" ] && kill "$(cat "$D/$p.pid")" 2>/dev/null; rm -f "$D/$p.pid"
  done
  rm -rf $PIN
  ip netns del udpx-pod 2>/dev/null || true; ip netns del udpx-rem 2>/dev/null || true
  rm -f /etc/netns/udpx-pod/resolv.conf; rmdir /etc/netns/udpx-pod 2>/dev/null || true
fi
