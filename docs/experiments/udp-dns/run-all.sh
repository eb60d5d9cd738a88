#!/bin/bash
# run-all.sh: build, set up, run experiments 1-5 and 8, tear down. Root; needs clang, bpftool, libbpf-dev,
# dnsmasq-base, conntrack, nftables, python3. Creates netns udpx-pod/udpx-rem/udpx-bench and /sys/fs/bpf/udpexp.
set -u
D=$(cd "$(dirname "$0")" && pwd); cd "$D"
clang -target bpf -g -O2 -I/usr/include/x86_64-linux-gnu -c udpx.bpf.c -o udpx.bpf.o &&
  bpftool gen skeleton udpx.bpf.o > udpx.skel.h && cc -O2 -o udpx_load udpx_load.c -lbpf || exit 1
./setup.sh up || { ./setup.sh down; exit 1; }
trap './setup.sh down' EXIT
sleep 0.5
PX="ip netns exec udpx-pod"; P="ip -n udpx-pod"
agent() { nsenter --net=/run/netns/udpx-pod python3 dnsagent.py "$@" > agent.log 2>&1 & AGENT=$!; sleep 1; }
stop()  { kill $AGENT; wait $AGENT 2>/dev/null; tail -1 agent.log; }

echo "=== 1. DNS path (dnsmasq at 10.77.0.2 / fd00:77::2)"
agent session
for s in 10.77.0.2 fd00:77::2; do for t in A AAAA; do $PX python3 dnsclient.py $s 1 $t; done; done
mkdir -p /etc/netns/udpx-pod
for ns in 10.77.0.2 fd00:77::2; do
  echo "nameserver $ns" > /etc/netns/udpx-pod/resolv.conf; echo "getent ahosts via $ns:"; $PX getent ahosts test.example
done
rm -f /etc/netns/udpx-pod/resolv.conf; rmdir /etc/netns/udpx-pod
stop

echo "=== 2. 1000 parallel queries from one socket (fastdns at 10.77.0.3 / fd00:77::3)"
echo "baseline, client marked 0x539 (not captured):"
$PX python3 dnsclient.py 10.77.0.3 1000 A mark; $PX python3 dnsclient.py fd00:77::3 1000 AAAA mark
for mode in session close; do
  echo "-- $mode"; agent $mode
  for i in 1 2 3; do $PX python3 dnsclient.py 10.77.0.3 1000 A; $PX python3 dnsclient.py fd00:77::3 1000 AAAA; done
  stop
done

echo "=== 3. conntrack in the pod netns"
agent session
$PX python3 dnsclient.py 10.77.0.3 2 A; echo "no ct user:"; $PX conntrack -L 2>&1 | tail -1
$PX nft -f ctprobe.nft
$PX python3 dnsclient.py 10.77.0.3 2 A; echo "with count-only ct table:"; $PX conntrack -L 2>&1
$PX nft list table inet ctprobe | grep counter
$PX nft delete table inet ctprobe; $PX conntrack -F 2>/dev/null
stop

echo "=== 4. inbound UDP to 10.77.0.1:7000 / [fd00:77::1]:7000"
f='client|app got|app reply|inagent captures|more than|failed|Error'
echo "-- A: no loop guard";                      ./inrun.sh none transparent no 2>&1 | grep -E "$f"
echo "-- B: bypass map keyed (ip,port), 2 datagrams"; COUNT=2 ./inrun.sh bypass transparent no 2>&1 | grep -E "$f"
echo "-- C: ingress_ifindex guard only";         ./inrun.sh ifindex raw yes 2>&1 | grep -E "$f"
echo "-- D: guard + SO_BINDTODEVICE lo + sport rule, transparent reply"; BIND_LO=1 ./inrun.sh ifindex transparent yes 2>&1 | grep -E "$f"
echo "-- E: guard + SO_BINDTODEVICE lo + sport rule, raw reply";  BIND_LO=1 COUNT=2 ./inrun.sh ifindex raw yes 2>&1 | grep -E "$f"
echo "-- F: guard + SO_BINDTODEVICE lo, no sport rule";           BIND_LO=1 ./inrun.sh ifindex raw no 2>&1 | grep -E "$f"

echo "=== 5. upstream port unreachable (10.77.0.2:9999, no listener)"
echo "-- not captured:"; $PX python3 errapp.py 10.77.0.2 9999; $PX python3 errapp.py fd00:77::2 9999
for f6 in "" -6; do $P $f6 rule add ipproto udp dport 9999 lookup 133 pref 102; done
echo "-- captured, no reflection:"; agent session 53 9999
$PX python3 errapp.py 10.77.0.2 9999; $PX python3 errapp.py fd00:77::2 9999; stop
echo "-- captured, ICMP reflected:"; REFLECT_ICMP=1 agent session 53 9999
$PX python3 errapp.py 10.77.0.2 9999; $PX python3 errapp.py fd00:77::2 9999; stop
for f6 in "" -6; do $P $f6 rule del pref 102; done

echo "=== 8. connected UDP sockets on one local addr:port"
ip netns add udpx-bench; ip -n udpx-bench link set lo up
for n in 0 1000 10000; do ip netns exec udpx-bench python3 hash4bench.py 127.0.0.1 $n; done
ip netns del udpx-bench
