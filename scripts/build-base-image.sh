#!/usr/bin/env bash
# Build localhost/pystitch-base:bookworm, a minimal Debian 12 ("bookworm")
# image that stands in for docker.io/library/debian:bookworm-slim on machines
# that cannot pull from a container registry.  It is made with mmdebstrap from
# the Debian mirror this machine's apt already uses, then imported into the
# project's podman store (see scripts/podman-env.sh).
#
# Usage: scripts/build-base-image.sh [--force] [--tag IMAGE]
#
#   --force      rebuild even if the image already exists
#   --tag IMAGE  image name to create (default localhost/pystitch-base:bookworm)
#
# Environment:
#   PYSTITCH_DEBIAN_MIRROR           Debian archive URI (default: taken from apt's sources)
#   PYSTITCH_DEBIAN_SECURITY_MIRROR  Debian security URI (default: taken from apt's sources;
#                                    set it to "none" to leave the security suite out)
#
# Missing tools (podman, mmdebstrap, ...) are installed with apt-get when run
# as root.  The project's Containerfiles take the base image as a build
# argument, e.g.
#
#   podman build --build-arg BASE_IMAGE=localhost/pystitch-base:bookworm ...
set -euo pipefail

IMAGE=localhost/pystitch-base:bookworm
FORCE=0
SUITE=bookworm

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --tag) IMAGE=${2:?--tag needs an image name}; shift ;;
        --tag=*) IMAGE=${1#--tag=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-base-image.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[build-base-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

# ---- tools -------------------------------------------------------------------
# command -> Debian package providing it
declare -A TOOL_PKG=(
    [podman]=podman
    [mmdebstrap]=mmdebstrap
    [conmon]=conmon
    [runc]=runc
    [newuidmap]=uidmap
    [slirp4netns]=slirp4netns
    [iptables]=iptables
)
PATH="$PATH:/usr/sbin:/sbin"    # iptables lives there; not every root shell has it
missing=()
for cmd in "${!TOOL_PKG[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${TOOL_PKG[$cmd]}")
done
# CNI plugins are not commands on PATH; podman 4 on Debian 12 uses them for
# its default bridge network.
[ -d /usr/lib/cni ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        die "missing packages: ${missing[*]} (install them with: sudo apt-get install ${missing[*]})"
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # catatonit gives `podman run --init`; fuse-overlayfs is needed by rootless
    # overlay on older kernels.  Both are small.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" catatonit fuse-overlayfs >/dev/null
fi

# shellcheck source=scripts/podman-env.sh
. "$HERE/podman-env.sh"

if [ "$FORCE" -eq 0 ] && podman image exists "$IMAGE"; then
    log "$IMAGE already exists (use --force to rebuild)"
    exit 0
fi

# ---- Debian mirror -----------------------------------------------------------
# Ask apt which archives it is configured with; this covers both one-line
# sources.list entries and deb822 .sources files.  Entries are
# "URI|SUITE|ORIGIN" (ORIGIN comes from the downloaded Release files).
apt_targets() {
    # shellcheck disable=SC2016  # $(...) are apt's format fields, not shell
    apt-get indextargets --format '$(REPO_URI)|$(RELEASE)|$(ORIGIN)' 'Created-By: Packages' 2>/dev/null | sort -u
}
pick_mirror() {   # $1 = "archive" or "security"
    awk -F'|' -v want="$1" '
        $3 != "Debian" && $3 != "" { next }
        $3 == "" && $1 !~ /debian/ { next }   # no Release file yet: judge by the URI
        { sec = ($2 ~ /-security$/ || $1 ~ /debian-security/) }
        (want == "security") == sec { print $1; exit }'
}
targets=$(apt_targets)
if ! grep -q '|Debian$' <<<"$targets"; then
    # Release files not downloaded yet: without them apt cannot tell Debian
    # archives from third-party ones.
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq || true; fi
    targets=$(apt_targets)
fi
MIRROR=${PYSTITCH_DEBIAN_MIRROR:-$(pick_mirror archive <<<"$targets")}
SECURITY=${PYSTITCH_DEBIAN_SECURITY_MIRROR:-$(pick_mirror security <<<"$targets")}
[ -n "$MIRROR" ] || die "no Debian archive found in apt's sources; set PYSTITCH_DEBIAN_MIRROR (e.g. the URI apt uses for Debian)"
MIRROR=${MIRROR%/}
SECURITY=${SECURITY%/}
[ "$SECURITY" = none ] && SECURITY=

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || die "$KEYRING is missing (apt-get install debian-archive-keyring)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pystitch-base.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# deb822 sources for the image; they end up as /etc/apt/sources.list.d/debian.sources,
# where the official Debian images keep theirs.
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' \
        "$MIRROR" "$SUITE" "$SUITE" "$KEYRING"
    if [ -n "$SECURITY" ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
            "$SECURITY" "$SUITE" "$KEYRING"
    fi
} >"$WORK/debian.sources"
log "Debian archive: $MIRROR"
log "Debian security: ${SECURITY:-(not used)}"

mm_opts=(--variant=minbase)
# Merged /usr, as in the official bookworm images (the hook ships with mmdebstrap).
[ -d /usr/share/mmdebstrap/hooks/merged-usr ] \
    && mm_opts+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
# Snapshot mirrors serve Release files whose Valid-Until date has passed.
if grep -q 'snapshot\.debian\.org' <<<"$MIRROR $SECURITY"; then
    mm_opts+=(--aptopt='Acquire::Check-Valid-Until "false"')
fi
# shellcheck disable=SC2016
mm_opts+=(
    # Replace mmdebstrap's numbered copy of the sources with the usual name
    # ("$1" is the root file system, expanded by mmdebstrap).
    --customize-hook='rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*'
    --customize-hook="upload $WORK/debian.sources /etc/apt/sources.list.d/debian.sources"
)

# ---- build and import --------------------------------------------------------
log "building the $SUITE root file system (mmdebstrap)"
# Device nodes are dropped from the tarball: the container runtime mounts its
# own /dev, and the official images ship an empty one too.
if ! mmdebstrap "${mm_opts[@]}" "$SUITE" - "$WORK/debian.sources" 2>"$WORK/mmdebstrap.log" \
    | tar --delete --wildcards './dev/?*' >"$WORK/rootfs.tar"; then
    tail -n 40 "$WORK/mmdebstrap.log" >&2
    die "mmdebstrap failed (log above)"
fi

created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "importing as $IMAGE"
podman import --quiet \
    --change 'CMD ["bash"]' \
    --change "LABEL org.opencontainers.image.title=pystitch-base" \
    --change "LABEL org.opencontainers.image.description=Debian $SUITE minbase for pystitch builds (stands in for debian:$SUITE-slim)" \
    --change "LABEL org.opencontainers.image.created=$created" \
    --change "LABEL org.opencontainers.image.base.name=debian:$SUITE" \
    "$WORK/rootfs.tar" "$IMAGE" >/dev/null

# ---- smoke test --------------------------------------------------------------
version=$(podman run --rm --network none "$IMAGE" cat /etc/debian_version) \
    || die "the new image does not run; check the podman setup (scripts/podman-env.sh)"
log "$IMAGE ready (Debian $version, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
