#!/bin/sh
# One swtpm per simulated host of benchmarks/fleet_1000.py, on Unix sockets (TCTI swtpm:path=DIR/HOST.sock,
# control socket DIR/HOST.sock.ctrl).
#   swtpm-fleet.sh start DIR JOBS HOST...   fresh state DIR/HOST each: no swtpm_setup. The TPM manufactures
#                                           itself at its first start with a random endorsement seed, so every
#                                           host has its own EK (derived from that seed when first asked for).
#                                           JOBS instances are started in parallel.
#   swtpm-fleet.sh stop DIR                 TERM to every instance of DIR (throw-away state: no TPM2_Shutdown)
set -eu
cmd=$1
dir=$2
shift 2
case "$cmd" in
start)
    jobs=$1
    shift
    mkdir -m 0700 "$dir"
    # shellcheck disable=SC2016  # the inner script's own arguments
    for host in "$@"; do printf '%s\n' "$host"; done | xargs -P "$jobs" -I '{}' sh -c '
        set -eu
        mkdir -m 0700 "$1/$2"
        swtpm socket --tpm2 --tpmstate "dir=$1/$2" --server "type=unixio,path=$1/$2.sock,mode=0600" \
            --ctrl "type=unixio,path=$1/$2.sock.ctrl,mode=0600" --flags not-need-init,startup-clear \
            --daemon --pid "file=$1/$2.pid" --log "file=$1/$2.log"
        tries=0
        until [ -S "$1/$2.sock" ] && [ -s "$1/$2.pid" ]; do
            tries=$((tries + 1))
            [ "$tries" -le 200 ] || { echo "swtpm for $2 did not start" >&2; exit 1; }
            sleep 0.05
        done' sh "$dir" '{}'
    echo "started $# swtpm instances in $dir"
    ;;
stop)
    count=0
    for pidfile in "$dir"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
        count=$((count + 1))
    done
    echo "stopped $count swtpm instances in $dir"
    ;;
*)
    echo "usage: $0 start DIR JOBS HOST... | stop DIR" >&2
    exit 2
    ;;
esac
