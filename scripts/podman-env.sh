# shellcheck shell=bash
# Point podman (and buildah) at a private storage and engine configuration for
# this project.  Source it from bash; do not execute it:
#
#     source scripts/podman-env.sh            # or: . scripts/podman-env.sh
#     podman images
#
# It writes, only when their content changes,
#
#     <repo>/.tools/podman/storage.conf      image store under <repo>/.tools/podman/storage
#     <repo>/.tools/podman/containers.conf   engine settings (see below)
#
# and exports CONTAINERS_STORAGE_CONF and CONTAINERS_CONF.  Images built with
# these settings live in the project's own store, so they never mix with (or
# get pruned together with) the machine's other podman images.
#
# Engine settings are added only where the host needs them:
#
#   runtime = "runc"         on a hybrid cgroup v1 + v2 host, where crun (the
#                            default runtime) refuses to start containers.
#   cgroup_manager = "cgroupfs"
#                            when systemd is not the init system, so there is
#                            no systemd to delegate cgroups to.
#   events_logger = "file"   when there is no journald socket.
#   netns = "host"           rootless, when /dev/net/tun cannot be opened, so
#                            slirp4netns (the rootless network) cannot start.
#   default_ulimits          as root without CAP_SYS_RESOURCE (some VMs and
#                            containers): podman's defaults (nofile=1048576,
#                            nproc=pid_max) exceed what such a process may set,
#                            and every container fails to start.  The limits
#                            are set to the highest values allowed here.
#
# On an ordinary workstation (cgroup v2, systemd, full root or rootless) none
# of these apply and podman keeps its own defaults.
#
# Overrides (environment, read each time this file is sourced):
#   PYSTITCH_PODMAN_STORAGE  image store directory (default <repo>/.tools/podman/storage)
#   PYSTITCH_PODMAN_DRIVER   storage driver (default overlay; vfs where overlay cannot work)
#
# Note: podman 4.x reads only the file named by CONTAINERS_CONF, so settings in
# ~/.config/containers/containers.conf are not used while this is in effect.
# Run `unset CONTAINERS_CONF CONTAINERS_STORAGE_CONF` to go back to the
# machine's own podman setup.

if [ -z "${BASH_VERSION:-}" ]; then
    echo "podman-env.sh: source this file from bash" >&2
    # shellcheck disable=SC2317  # exit is reached only when not sourced
    return 1 2>/dev/null || exit 1
fi
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "podman-env.sh: source this file (. scripts/podman-env.sh) instead of running it" >&2
    exit 1
fi

_pystitch_podman_env() {
    local repo confdir storage runbase runroot driver key
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P) || return 1
    confdir="$repo/.tools/podman"
    storage="${PYSTITCH_PODMAN_STORAGE:-$confdir/storage}"
    mkdir -p "$confdir" "$storage" || return 1

    # Runtime state (locks, mounts) belongs on a per-boot directory, one per
    # image store so that two checkouts never share it.
    key=$(printf '%s' "$storage" | cksum | cut -d' ' -f1)
    if [ "$(id -u)" -eq 0 ]; then
        runbase=/run
    elif [ -n "${XDG_RUNTIME_DIR:-}" ] && [ -w "${XDG_RUNTIME_DIR}" ]; then
        runbase=$XDG_RUNTIME_DIR
    else
        runbase=/tmp
    fi
    runroot="$runbase/pystitch-podman-$(id -u)-$key"

    # Overlay cannot be stacked on overlayfs (e.g. inside another container)
    # and is unreliable on network file systems; fall back to vfs there.
    driver="${PYSTITCH_PODMAN_DRIVER:-}"
    if [ -z "$driver" ]; then
        case "$(stat -f -c %T "$storage" 2>/dev/null)" in
            overlayfs | nfs* | cifs | smb*) driver=vfs ;;
            *) driver=overlay ;;
        esac
    fi

    local storage_conf
    storage_conf=$(cat <<EOF
# Written by scripts/podman-env.sh; edits are overwritten.
[storage]
driver = "$driver"
graphroot = "$storage"
runroot = "$runroot"
EOF
)
    # Rootless overlay needs fuse-overlayfs on kernels older than 5.13.
    if [ "$driver" = overlay ] && [ "$(id -u)" -ne 0 ] && command -v fuse-overlayfs >/dev/null; then
        local kmaj kmin
        IFS=. read -r kmaj kmin _ <<<"$(uname -r)"
        if [ "$kmaj" -lt 5 ] || { [ "$kmaj" -eq 5 ] && [ "${kmin%%[!0-9]*}" -lt 13 ]; }; then
            storage_conf+=$'\n[storage.options.overlay]\nmount_program = "'"$(command -v fuse-overlayfs)"'"'
        fi
    fi

    # ---- engine settings: only what this host needs -------------------------
    local containers_section="" engine_section=""

    # Hybrid cgroups: v1 controllers at /sys/fs/cgroup plus a cgroup2 mount at
    # /sys/fs/cgroup/unified.  crun (podman's default runtime) refuses to start
    # containers on such hosts when the v2 hierarchy holds any controller;
    # runc handles every layout, so hybrid hosts always use runc.
    if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] \
        && [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
        if command -v runc >/dev/null; then
            engine_section+=$'# hybrid cgroup v1/v2 host: crun refuses it, runc works\nruntime = "runc"\n'
        else
            echo "podman-env.sh: hybrid cgroup host and runc is not installed; containers may fail to start (apt-get install runc)" >&2
        fi
    fi

    if [ ! -d /run/systemd/system ]; then
        engine_section+=$'# systemd is not the init system\ncgroup_manager = "cgroupfs"\n'
    fi
    if [ ! -S /run/systemd/journal/socket ]; then
        engine_section+=$'# no journald\nevents_logger = "file"\n'
    fi
    # Keep podman's per-boot state next to the private store, not in /run/libpod.
    engine_section+="tmp_dir = \"$runroot/libpod\""$'\n'

    # Rootless containers get their network from slirp4netns, which needs
    # /dev/net/tun.  Where that device is unusable, share the host's network
    # namespace instead (containers still run in their own user namespace).
    if [ "$(id -u)" -ne 0 ] && ! (: <>/dev/net/tun) 2>/dev/null; then
        containers_section+="# rootless and /dev/net/tun is not usable: slirp4netns cannot work"$'\n'
        containers_section+='netns = "host"'$'\n'
    fi

    # Root without CAP_SYS_RESOURCE (bit 24 of CapEff) cannot raise rlimits
    # above its own hard limits.  podman lowers its own nproc to kernel.pid_max
    # when it starts, so the container's nproc must not exceed that either.
    if [ "$(id -u)" -eq 0 ]; then
        local capeff
        capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status 2>/dev/null)
        if [ -n "$capeff" ] && (( (16#$capeff >> 24 & 1) == 0 )); then
            local nofile nproc pidmax
            nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
            pidmax=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 4194304)
            [ "$nofile" = unlimited ] && nofile=1048576
            [ "$nproc" = unlimited ] && nproc=$pidmax
            [ "$nofile" -gt 1048576 ] && nofile=1048576
            [ "$nproc" -gt "$pidmax" ] && nproc=$pidmax
            containers_section+="# root without CAP_SYS_RESOURCE: stay within this host's hard limits"$'\n'
            containers_section+="default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"$'\n'
        fi
    fi

    local containers_conf
    containers_conf="# Written by scripts/podman-env.sh; edits are overwritten."$'\n'
    containers_conf+="[containers]"$'\n'"$containers_section"
    containers_conf+="[engine]"$'\n'"$engine_section"

    # Write only on change, so that sourcing this file repeatedly is cheap and
    # leaves timestamps alone.
    _pystitch_write_if_changed() {
        local want
        want=$(printf '%s' "$2")    # drop trailing newlines, as $(cat) does
        if [ ! -f "$1" ] || [ "$(cat "$1")" != "$want" ]; then
            printf '%s\n' "$want" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
        fi
    }
    _pystitch_write_if_changed "$confdir/storage.conf" "$storage_conf" || return 1
    _pystitch_write_if_changed "$confdir/containers.conf" "$containers_conf" || return 1
    unset -f _pystitch_write_if_changed

    export CONTAINERS_STORAGE_CONF="$confdir/storage.conf"
    export CONTAINERS_CONF="$confdir/containers.conf"
}

_pystitch_podman_env
_pystitch_podman_env_rc=$?
unset -f _pystitch_podman_env
if [ "$_pystitch_podman_env_rc" -ne 0 ]; then
    unset _pystitch_podman_env_rc
    echo "podman-env.sh: could not write the podman configuration" >&2
    return 1
fi
unset _pystitch_podman_env_rc
