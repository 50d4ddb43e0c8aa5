#!/bin/bash
# A simulated network link between two MPI ranks on one machine (root; Linux network namespaces):
#
#   link.sh up [DELAY_US] [RATE]   namespaces scA and scB joined by a link with a one-way delay
#                                  (microseconds, default 0) and an optional rate (tc tbf, e.g. 1gbit)
#   link.sh run CMD...             mpirun -np 2 over the link: rank 0 in scA, rank 1 in scB, TCP only
#   link.sh down                   removes the namespaces and stops the relay
#
# The delay uses `tc netem` where the kernel has it (a veth pair); where it does not
# (CONFIG_NET_SCH_NETEM unset, as on the VMs this project is measured on), a small relay,
# delayrelay.c, forwards packets between a tun device in each namespace after the delay.
# arbench.c times one 1.08 MB MPI_Allreduce (the ResNet-20 buffer) after a barrier:
#   mpicc -O2 -o arbench arbench.c && link.sh run ./arbench 12
# docs/CLUSTER.md has the measurements and what they say about the cost model.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${SC_NETNS_STATE:-/tmp/sc-netns}
mkdir -p "$state"
cmd=${1:?usage: link.sh up [DELAY_US] [RATE] | run CMD... | down}; shift

down() {
    [ -f "$state/relay.pid" ] && kill "$(cat "$state/relay.pid")" 2>/dev/null || true
    rm -f "$state/relay.pid"
    ip netns del scA 2>/dev/null || true
    ip netns del scB 2>/dev/null || true
}

case $cmd in
up)
    delay=${1:-0}; rate=${2:-}
    down
    ip netns add scA; ip netns add scB
    ip -n scA link set lo up; ip -n scB link set lo up
    if ip link add vethA type veth peer name vethB 2>/dev/null; then
        ip link set vethA netns scA; ip link set vethB netns scB
        ip -n scA addr add 10.77.0.1/24 dev vethA; ip -n scB addr add 10.77.0.2/24 dev vethB
        ip -n scA link set vethA up; ip -n scB link set vethB up
    fi
    if ip netns exec scA tc qdisc replace dev vethA root netem delay "${delay}us" ${rate:+rate $rate} 2>/dev/null; then
        ip netns exec scB tc qdisc replace dev vethB root netem delay "${delay}us" ${rate:+rate $rate}
        echo 10.77.0 > "$state/net"
        echo "link: veth, netem delay ${delay}us ${rate:+rate $rate}"
    else
        echo "link: no netem in this kernel; tun devices through delayrelay (${delay}us one way)" >&2
        cc -O2 -o "$state/delayrelay" "$here/delayrelay.c"
        nohup chrt -f 50 "$state/delayrelay" "$delay" > "$state/relay.out" 2>&1 &
        echo $! > "$state/relay.pid"
        sleep 0.5
        ip -n scA addr add 10.77.1.1/24 dev tunA; ip -n scA link set tunA mtu 1500 up
        ip -n scB addr add 10.77.1.2/24 dev tunB; ip -n scB link set tunB mtu 1500 up
        if [ -n "$rate" ]; then
            ip netns exec scA tc qdisc replace dev tunA root tbf rate "$rate" burst 32kb latency 100ms
            ip netns exec scB tc qdisc replace dev tunB root tbf rate "$rate" burst 32kb latency 100ms
        fi
        echo 10.77.1 > "$state/net"
    fi
    ;;
run)
    net=$(cat "$state/net")
    printf '%s.1 slots=1\n%s.2 slots=1\n' "$net" "$net" > "$state/hostfile"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    exec ip netns exec scA mpirun -np 2 --hostfile "$state/hostfile" \
        --mca plm_rsh_agent "$here/nsexec" --mca btl self,tcp --mca pml ob1 \
        --mca btl_tcp_if_include "$net.0/24" --mca oob_tcp_if_include "$net.0/24" \
        --bind-to none -x RAYON_NUM_THREADS=1 -x HOME "$@"
    ;;
down) down ;;
*) echo "usage: link.sh up [DELAY_US] [RATE] | run CMD... | down" >&2; exit 2 ;;
esac
