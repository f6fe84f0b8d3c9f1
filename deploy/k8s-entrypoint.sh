#!/bin/sh
# Start script for one Bytewax process of the driver-stats StatefulSet.
#
#   k8s-entrypoint.sh run            start this pod's process of the dataflow
#   k8s-entrypoint.sh init-recovery  create this pod's recovery partition once
#   k8s-entrypoint.sh addresses      print the peer address list and exit
#
# Environment (see k8s/README.md):
#   BYTEWAX_POD_NAME        pod name, e.g. driver-stats-1 (downward API)
#   POD_INDEX               pod ordinal from the apps.kubernetes.io/pod-index
#                           label (downward API); wins over the pod name
#   POD_NAMESPACE           namespace, for the peers' DNS names
#   BYTEWAX_REPLICAS        number of processes; must equal spec.replicas
#   BYTEWAX_SERVICE_NAME    headless Service name (default: StatefulSet name,
#                           i.e. the pod name without its "-<ordinal>")
#   BYTEWAX_PORT            port every process listens on (default 9999)
#   CLUSTER_DOMAIN          default cluster.local
#   BYTEWAX_PEER_PATTERN    overrides the whole peer address pattern; "{i}" is
#                           replaced by each ordinal (tests use 127.0.0.1 ports)
#   FLOW_MODULE             dataflow import string (default flows.driver_stats)
#   PYTHON                  interpreter (default python)
#   BYTEWAX_RECOVERY_DIRECTORY, BYTEWAX_RECOVERY_PARTS  for init-recovery
# bytewax.run itself reads BYTEWAX_WORKERS_PER_PROCESS, BYTEWAX_RECOVERY_DIRECTORY,
# BYTEWAX_SNAPSHOT_INTERVAL and BYTEWAX_RECOVERY_BACKUP_INTERVAL.
set -eu

log() { echo "k8s-entrypoint: $*" >&2; }
die() { log "error: $*"; exit 64; }

is_count() {
    case "$1" in '' | *[!0-9]*) return 1 ;; esac
}

# This pod's ordinal, which is its Bytewax process id.
ordinal() {
    if [ -n "${POD_INDEX:-}" ]; then
        idx=$POD_INDEX
    elif [ -n "${BYTEWAX_POD_NAME:-}" ]; then
        idx=${BYTEWAX_POD_NAME##*-}
    else
        die "set BYTEWAX_POD_NAME (e.g. driver-stats-0) or POD_INDEX"
    fi
    is_count "$idx" || die "cannot read a pod ordinal from POD_INDEX='${POD_INDEX:-}' BYTEWAX_POD_NAME='${BYTEWAX_POD_NAME:-}'"
    echo "$idx"
}

replicas() {
    n=${BYTEWAX_REPLICAS:-}
    is_count "$n" && [ "$n" -ge 1 ] || die "BYTEWAX_REPLICAS='$n' must be a whole number >= 1"
    echo "$n"
}

peer_pattern() {
    if [ -n "${BYTEWAX_PEER_PATTERN:-}" ]; then
        echo "$BYTEWAX_PEER_PATTERN"
        return
    fi
    [ -n "${BYTEWAX_POD_NAME:-}" ] || die "BYTEWAX_POD_NAME is needed to name the peers"
    [ -n "${POD_NAMESPACE:-}" ] || die "POD_NAMESPACE is needed to name the peers"
    sts=${BYTEWAX_POD_NAME%-*}
    echo "$sts-{i}.${BYTEWAX_SERVICE_NAME:-$sts}.$POD_NAMESPACE.svc.${CLUSTER_DOMAIN:-cluster.local}:${BYTEWAX_PORT:-9999}"
}

# "host0:port;host1:port;..." for every ordinal below the replica count.
addresses() {
    n=$(replicas)
    pattern=$(peer_pattern)
    list=""
    i=0
    while [ "$i" -lt "$n" ]; do
        addr=$(printf '%s\n' "$pattern" | sed "s/{i}/$i/g")
        list="${list:+$list;}$addr"
        i=$((i + 1))
    done
    echo "$list"
}

cmd_run() {
    id=$(ordinal)
    n=$(replicas)
    [ "$id" -lt "$n" ] || die "pod ordinal $id is not below BYTEWAX_REPLICAS=$n: spec.replicas and BYTEWAX_REPLICAS disagree"
    addrs=$(addresses)
    flow=${FLOW_MODULE:-flows.driver_stats}
    log "process $id of $n, flow $flow, peers $addrs"
    exec "${PYTHON:-python}" -m bytewax.run "$flow" -i "$id" -a "$addrs" "$@"
}

# Creates part-<ordinal>.sqlite3 of BYTEWAX_RECOVERY_PARTS partitions, and only
# when the directory is empty: a directory with anything in it (partitions, or a
# note left by a migration) is never touched. A pod whose ordinal is not below
# the partition count gets no partition, which Bytewax allows (scale-up).
cmd_init_recovery() {
    dir=${BYTEWAX_RECOVERY_DIRECTORY:-}
    [ -n "$dir" ] || die "BYTEWAX_RECOVERY_DIRECTORY is not set"
    [ -d "$dir" ] || die "recovery directory $dir does not exist (is the volume mounted?)"
    id=$(ordinal)
    parts=${BYTEWAX_RECOVERY_PARTS:-$(replicas)}
    is_count "$parts" && [ "$parts" -ge 1 ] || die "BYTEWAX_RECOVERY_PARTS='$parts' must be a whole number >= 1"
    tmp="$dir/.init-recovery.tmp"
    rm -rf "$tmp"
    content=$(ls -A "$dir" | grep -v -x -e 'lost+found' || true)
    if [ -n "$content" ]; then
        log "$dir is not empty, leaving it as it is: $(echo "$content" | tr '\n' ' ')"
        return 0
    fi
    if [ "$id" -ge "$parts" ]; then
        log "process $id gets no recovery partition ($parts partitions, held by processes 0..$((parts - 1)))"
        return 0
    fi
    mkdir "$tmp"
    "${PYTHON:-python}" -m bytewax.recovery "$tmp" "$parts"
    # Keep only this pod's partition; the others belong to the other pods.
    for f in "$tmp/part-$id.sqlite3"*; do
        mv "$f" "$dir/"
    done
    rm -rf "$tmp"
    log "created recovery partition $id of $parts in $dir"
}

command=${1:-run}
if [ $# -gt 0 ]; then shift; fi
case "$command" in
    run) cmd_run "$@" ;;
    init-recovery) cmd_init_recovery ;;
    addresses) addresses ;;
    *) die "unknown command '$command' (run, init-recovery, addresses)" ;;
esac
