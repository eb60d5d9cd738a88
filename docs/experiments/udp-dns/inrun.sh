#!/bin/bash
# [BIND_LO=1] [COUNT=n] inrun.sh LOOPGUARD REPLYHOW RULE(yes|no): one inbound-UDP run, v4 and v6
cd "$(dirname "$0")"
P="ip -n udpx-pod"
if [ "$3" = yes ]; then $P rule add ipproto udp sport 7000 lookup 133 pref 101; $P -6 rule add ipproto udp sport 7000 lookup 133 pref 101; fi
[ -n "$BIND_LO" ] && $P -6 rule add oif lo lookup 133 pref 98
ip netns exec udpx-pod python3 app.py 7000 > app.log 2>&1 & APP=$!
nsenter --net=/run/netns/udpx-pod python3 inagent.py 7000 $1 $2 > inagent.log 2>&1 & AG=$!
sleep 1
ip netns exec udpx-rem python3 rclient.py 10.77.0.2 5555 10.77.0.1 7000 ${COUNT:-1}
ip netns exec udpx-rem python3 rclient.py fd00:77::2 5556 fd00:77::1 7000 ${COUNT:-1}
kill $AG $APP; wait $AG $APP 2>/dev/null
echo "--- app:"; cat app.log; echo "--- agent:"; cat inagent.log
if [ "$3" = yes ]; then $P rule del pref 101; $P -6 rule del pref 101; fi
[ -n "$BIND_LO" ] && $P -6 rule del pref 98
fd=/sys/fs/bpf/udpexp; bpftool map dump pinned $fd/bypass | grep -c key | sed 's/^/bypass entries left: /'
