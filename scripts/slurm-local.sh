#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the pipeline's cluster tests and
# for trying `-profile slurm` by hand.
#
# Usage:
#   scripts/slurm-local.sh start [--gpus N]   install (once), configure, start, wait until the node is idle
#   scripts/slurm-local.sh stop               stop the daemons this script started
#   scripts/slurm-local.sh status             exit 0 and show the node when the cluster answers, else exit 3
#
# `start` is idempotent: a running cluster with the same configuration is left
# as it is; a changed configuration (e.g. another --gpus) restarts the daemons.
# It needs root: it installs Debian's packages (slurmctld, slurmd,
# slurm-client, munge) with apt-get when they are missing, writes
# /etc/slurm/slurm.conf and /etc/slurm/gres.conf, and starts munged,
# slurmctld and slurmd. It refuses to touch a slurm.conf it did not write.
#
# The cluster: one node (this machine, all its cores, its memory less 2 GB),
# one partition `local` (the default). Memory and cores are consumable
# resources (select/cons_tres, CR_Core_Memory), so sbatch refuses a request
# larger than the node and the scheduler packs jobs by their --mem and -c.
# Process tracking reads /proc (proctrack/linuxproc): no cgroups are needed,
# and none are used, so SLURM cannot confine a job's memory or cores.
# Memory is enforced by sampling instead: jobacct_gather/linux measures each
# job step's RSS every second and OverMemoryKill kills a step that exceeds
# its request (a job may exceed it for up to a second first).
# --gpus N declares N GPUs as a generic resource (gres/gpu) so that
# `sbatch --gres=gpu:1` is accepted; nothing gives a job a GPU. SLURM 22.05
# counts a gres/gpu only with a device file: stand-ins are made in
# /run/slurm-local/ (gpu0, gpu1, ...: character devices that behave as
# /dev/null).
#
# Logs: /var/log/slurm/slurmctld.log and slurmd.log.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
GRES="$CONF_DIR/gres.conf"
MARKER='# Written by pystitch scripts/slurm-local.sh'
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
GPU_DIR=/run/slurm-local
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "slurm-local: $*" >&2; }
die() {
    log "error: $1"
    exit "${2:-1}"
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-0}"
}

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

answering() { timeout 10 sinfo -h -o %T >/dev/null 2>&1; }

node_state() { timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n 1 || true; }

need_root() {
    [[ "$(id -u)" -eq 0 ]] ||
        die "'$1' needs root (it installs packages, writes $CONF_DIR and starts daemons); you are uid $(id -u)" 2
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null ||
        die "the Debian packages ${missing[*]} are missing and apt-get is not available to install them" 2
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq >&2 || die "apt-get update failed"
    # no daemon is started by the packages' scripts when there is no init system;
    # this script starts them itself
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

# the configuration for this machine, on stdout
slurm_conf() {
    local host cpus mem gpus="$1"
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem=$(($(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) - 2048))
    cat <<CONF
$MARKER: a one-node test cluster.
ClusterName=pystitch-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=3600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem$( ((gpus > 0)) && echo " Gres=gpu:$gpus") State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

gres_conf() {
    local gpus="$1" i
    echo "$MARKER."
    for ((i = 0; i < gpus; i++)); do
        echo "NodeName=$(hostname -s) Name=gpu File=$GPU_DIR/gpu$i"
    done
}

# stand-in device files for the declared GPUs (the major/minor numbers of /dev/null)
make_gpu_files() {
    local gpus="$1" i
    mkdir -p "$GPU_DIR"
    for ((i = 0; i < gpus; i++)); do
        [[ -c "$GPU_DIR/gpu$i" ]] || mknod -m 0666 "$GPU_DIR/gpu$i" c 1 3 ||
            die "cannot create the stand-in device $GPU_DIR/gpu$i for --gpus (mknod)"
    done
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        fi
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

stop_daemons() {
    local f pid
    for f in "$SLURMD_PID" "$CTLD_PID"; do
        alive "$f" || continue
        pid="$(cat "$f")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$(basename "$f" .pid) (pid $pid) did not stop; sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

cmd_start() {
    local gpus=0
    while (($#)); do
        case "$1" in
            --gpus) [[ $# -ge 2 ]] || usage 2; gpus="$2"; shift ;;
            --gpus=*) gpus="${1#--gpus=}" ;;
            *) log "unknown argument: $1"; usage 2 ;;
        esac
        shift
    done
    [[ "$gpus" =~ ^[0-9]+$ ]] || die "--gpus expects a number of GPUs (0 or more); got '$gpus'" 2
    need_root start
    install_packages

    mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script: not touching a site's configuration" 2
    fi
    local new changed=0
    new="$(slurm_conf "$gpus")"
    if [[ "$(cat "$CONF" 2>/dev/null || true)" != "$new" ]]; then
        printf '%s\n' "$new" >"$CONF"
        changed=1
    fi
    new="$(gres_conf "$gpus")"
    if [[ "$(cat "$GRES" 2>/dev/null || true)" != "$new" ]]; then
        printf '%s\n' "$new" >"$GRES"
        changed=1
    fi
    chmod 0644 "$CONF" "$GRES"

    make_gpu_files "$gpus"
    start_munge
    if ((changed)) && { alive "$CTLD_PID" || alive "$SLURMD_PID"; }; then
        log "configuration changed: restarting the daemons"
        stop_daemons
    fi
    if ! alive "$CTLD_PID"; then
        log "starting slurmctld"
        slurmctld -i
    fi
    if ! alive "$SLURMD_PID"; then
        log "starting slurmd"
        slurmd
    fi

    local state=''
    for _ in $(seq 60); do
        state="$(node_state)"
        case "$state" in
            idle | mixed | allocated) break ;;
            down* | drain* | drained*)
                scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    case "$state" in
        idle | mixed | allocated) ;;
        *) die "the node did not become idle (state '${state:-none}'); see /var/log/slurm/slurmctld.log and slurmd.log" ;;
    esac
    sinfo -N -o '%N %T %c %m %G' >&2
    log "running: partition local, node $(hostname -s) ($state)"
}

cmd_stop() {
    need_root stop
    stop_daemons
    log "stopped slurmctld and slurmd (munged is left running: other tools may use it)"
}

cmd_status() {
    if command -v sinfo >/dev/null && answering; then
        sinfo -N -o '%N %T %c %m %G'
        return 0
    fi
    echo "slurm-local: not running"
    return 3
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help) usage 0 ;;
    *) usage 2 ;;
esac
