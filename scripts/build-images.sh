#!/usr/bin/env bash
# Build the pystitch container images and print the name of the image built.
#
# Usage: scripts/build-images.sh [--gpu [--models "NAME ..."]] [--base IMAGE] [--tag TAG]
#                                [--save DIR] [--engine podman|docker] [-- ENGINE-BUILD-ARGS...]
#
#   (default)        build the CPU image, containers/cpu/Dockerfile, as
#                    pystitch-cpu:<version> (version from pystitch/_version.py)
#   --gpu            build the GPU image instead, containers/gpu/Dockerfile, as
#                    pystitch-gpu:<version>: Cellpose + torch (PyPI's CUDA 13.0
#                    build; ~6.8 GB, ~4 min cold; the GPU needs an NVIDIA
#                    driver >= 580 on the host)
#   --models LIST    GPU image only: built-in Cellpose models to download into
#                    the image at build time, e.g. "cyto3 nuclei" (the build
#                    needs internet access to www.cellpose.org); default none
#   --base IMAGE     base image (a Debian 12 "bookworm" image); default
#                    $PYSTITCH_BASE_IMAGE, else the Dockerfile's BASE_IMAGE
#                    (docker.io/library/debian:bookworm-slim).  Hosts without
#                    registry access use localhost/pystitch-base:bookworm, made
#                    by scripts/build-base-image.sh.
#   --tag TAG        image name: a bare tag ("dev" gives pystitch-cpu:dev, or
#                    pystitch-gpu:dev with --gpu) or a full reference
#                    ("registry.example.org/lab/pystitch-cpu:0.1.0")
#   --save DIR       also write the image as a docker-archive tarball,
#                    DIR/<name>-<tag>.tar (for `podman load`, `docker load` or
#                    `apptainer build x.sif docker-archive://DIR/<name>-<tag>.tar`)
#   --engine ENGINE  podman or docker (default $PYSTITCH_CONTAINER_ENGINE, else
#                    podman when installed, else docker)
#   -- ARGS...       passed to `podman build` / `docker build` as they are,
#                    e.g. -- --no-cache --build-arg PYSTITCH_EXTRAS=
#
# Environment:
#   PYSTITCH_BASE_IMAGE  default for --base
#   PYSTITCH_PIP_CA      CA bundle handed to pip inside the build as the
#                        build secret "pip-ca" (default
#                        /etc/ssl/certs/ca-certificates.crt when it exists;
#                        "none" to hand none)
#   PYSTITCH_SOURCE_URL  org.opencontainers.image.source label (default: the
#                        git remote "origin" as an https address; left out when
#                        the remote is a local path)
#
# With podman the image goes to the project's image store (scripts/podman-env.sh
# is sourced), where scripts/build-base-image.sh puts the local base image.
# The build log goes to stderr; stdout gets only the image name, so
#
#   image=$(scripts/build-images.sh --base localhost/pystitch-base:bookworm)
#
# works.  Exit status: 0 built, 1 failed, 2 bad arguments.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

VARIANT=cpu
BASE=${PYSTITCH_BASE_IMAGE:-}
TAG=
SAVE_DIR=
ENGINE=${PYSTITCH_CONTAINER_ENGINE:-}
MODELS=
EXTRA_ARGS=()

need_value() { [ -n "${2:-}" ] || { log "$1 needs a value"; usage >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) VARIANT=gpu ;;
        --cpu) VARIANT=cpu ;;
        --models) [ $# -ge 2 ] || need_value "$1" ""; MODELS=$2; shift ;;
        --models=*) MODELS=${1#--models=} ;;
        --base) need_value "$1" "${2:-}"; BASE=$2; shift ;;
        --base=*) BASE=${1#--base=} ;;
        --tag) need_value "$1" "${2:-}"; TAG=$2; shift ;;
        --tag=*) TAG=${1#--tag=} ;;
        --save) need_value "$1" "${2:-}"; SAVE_DIR=$2; shift ;;
        --save=*) SAVE_DIR=${1#--save=} ;;
        --engine) need_value "$1" "${2:-}"; ENGINE=$2; shift ;;
        --engine=*) ENGINE=${1#--engine=} ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        *) log "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
    shift
done

# ---- which image ---------------------------------------------------------------
# cpu: every step except Cellpose.  gpu: the same plus Cellpose and torch
# (CUDA), for segment-block --backend cellpose.  Both build from the
# repository root with the same base image, secret and labels.
NAME=pystitch-$VARIANT
DOCKERFILE="$REPO/containers/$VARIANT/Dockerfile"
[ -f "$DOCKERFILE" ] || die "$DOCKERFILE is missing"
if [ -n "$MODELS" ] && [ "$VARIANT" != gpu ]; then
    log "--models needs --gpu (the CPU image has no Cellpose)"; exit 2
fi

VERSION=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$REPO/pystitch/_version.py")
[ -n "$VERSION" ] || die "no __version__ in pystitch/_version.py"

case "$TAG" in
    "") IMAGE="$NAME:$VERSION" ;;
    */* | *:*) IMAGE=$TAG ;;
    *) IMAGE="$NAME:$TAG" ;;
esac

# ---- container engine ----------------------------------------------------------
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null 2>&1; then ENGINE=podman
    elif command -v docker >/dev/null 2>&1; then ENGINE=docker
    else die "neither podman nor docker is installed (scripts/build-base-image.sh installs podman on Debian)"
    fi
fi
case "$ENGINE" in
    podman)
        command -v podman >/dev/null 2>&1 || die "podman is not installed"
        # shellcheck source=scripts/podman-env.sh
        . "$REPO/scripts/podman-env.sh"
        ;;
    docker)
        command -v docker >/dev/null 2>&1 || die "docker is not installed"
        # RUN --mount and --secret need BuildKit (the default since Docker 23).
        export DOCKER_BUILDKIT=1
        ;;
    *) log "unknown engine: $ENGINE (podman or docker)"; exit 2 ;;
esac

# A locally made base image cannot be pulled: say how to make it.
if [ -n "$BASE" ] && [[ "$BASE" == localhost/* ]] && ! "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
    die "base image $BASE does not exist; build it with scripts/build-base-image.sh"
fi

# ---- per-build labels ------------------------------------------------------------
# Static labels are in the Dockerfile.  These change with every build, and a
# LABEL built from a build argument would be reused from the build cache even
# when the argument changes, so they are set here.
base_name=$BASE
if [ -z "$base_name" ]; then
    base_name=$(sed -n 's/^ARG BASE_IMAGE=//p' "$DOCKERFILE" | head -n 1)
fi

revision=unknown
source_url=${PYSTITCH_SOURCE_URL:-}
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
    # uncommitted changes to tracked files: the image is not exactly this commit
    if [ "$revision" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        revision="$revision-dirty"
    fi
    if [ -z "$source_url" ]; then
        source_url=$(git -C "$REPO" remote get-url origin 2>/dev/null || true)
        # Published as a web address: git@host:owner/repo.git and
        # ssh://git@host/owner/repo.git become https://host/owner/repo;
        # local paths and other schemes say nothing to the image's users.
        case "$source_url" in
            git@*:*) source_url=${source_url#git@}; source_url="https://${source_url/://}" ;;
            ssh://git@*) source_url="https://${source_url#ssh://git@}" ;;
            https://* | http://*) ;;
            *) source_url= ;;
        esac
        source_url=${source_url%.git}
        # never publish credentials (https://user:token@host/...)
        if [ -n "$source_url" ]; then
            scheme=${source_url%%://*}
            rest=${source_url#*://}
            authority=${rest%%/*}
            source_url="$scheme://${authority##*@}${rest#"$authority"}"
        fi
    fi
fi

labels=(
    --label "org.opencontainers.image.version=$VERSION"
    --label "org.opencontainers.image.revision=$revision"
    --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    --label "org.opencontainers.image.base.name=$base_name"
)
if [ -n "$source_url" ]; then
    labels+=(--label "org.opencontainers.image.source=$source_url")
else
    log "no web address of the git remote 'origin' and PYSTITCH_SOURCE_URL is unset:" \
        "the label org.opencontainers.image.source is left out"
fi

# ---- build -----------------------------------------------------------------------
build=("$ENGINE" build -f "$DOCKERFILE" -t "$IMAGE" "${labels[@]}")
if [ -n "$BASE" ]; then
    build+=(--build-arg "BASE_IMAGE=$BASE")
fi
if [ -n "$MODELS" ]; then
    build+=(--build-arg "CELLPOSE_MODELS=$MODELS")
fi

# pip inside the build trusts this CA bundle (a build secret: mounted only
# while pip runs, never stored in the image).
PIP_CA=${PYSTITCH_PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
if [ "$PIP_CA" != none ] && [ -s "$PIP_CA" ]; then
    build+=(--secret "id=pip-ca,src=$PIP_CA")
fi

build+=("${EXTRA_ARGS[@]}" "$REPO")

# ---- disk ------------------------------------------------------------------------
# A cold build holds the image's layers about three times over (the build
# stage, its commit, the final stage).  Where that much is not free, say so
# before the build (cached layers may still let it pass) and, when the build
# runs out of space, say where and how much is needed instead of leaving it to
# a line deep in the engine's log.
case "$VARIANT" in gpu) NEED_GB=20 ;; *) NEED_GB=4 ;; esac
store=
if [ "$ENGINE" = podman ]; then
    store=$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || true)
fi
free_gb() { df -Pk "$1" 2>/dev/null | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }
free_at_start=
if [ -n "$store" ] && [ -d "$store" ]; then
    free_at_start=$(free_gb "$store")
    if [ -n "$free_at_start" ] && [ "$free_at_start" -lt "$NEED_GB" ]; then
        log "warning: $free_at_start GB free in the image store $store; a cold build of $NAME needs about" \
            "$NEED_GB GB there (less where its layers are cached)"
    fi
fi

log "building $IMAGE (version $VERSION, base ${base_name}) with $ENGINE"
start=$SECONDS
build_log=$(mktemp "${TMPDIR:-/tmp}/pystitch-build.XXXXXX")
trap 'rm -f "$build_log"' EXIT
set +e
"${build[@]}" 2>&1 | tee "$build_log" >&2
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
    if grep -q "no space left on device" "$build_log"; then
        die "$ENGINE build of $NAME ran out of disk${store:+ in the image store $store}" \
            "(${free_at_start:-?} GB free when it started; a cold build needs about $NEED_GB GB): free space" \
            "there, or point PYSTITCH_PODMAN_STORAGE at a larger disk (scripts/podman-env.sh)"
    fi
    die "$ENGINE build failed"
fi
log "built $IMAGE in $((SECONDS - start)) s"

# ---- save ------------------------------------------------------------------------
if [ -n "$SAVE_DIR" ]; then
    mkdir -p "$SAVE_DIR"
    ref=${IMAGE##*/}                       # drop the registry/namespace
    [[ "$ref" == *:* ]] || ref="$ref:latest"
    archive="$SAVE_DIR/${ref%%:*}-${ref#*:}.tar"
    rm -f "$archive"
    if [ "$ENGINE" = podman ]; then
        podman save --format docker-archive -o "$archive" "$IMAGE" >&2
    else
        docker save -o "$archive" "$IMAGE" >&2
    fi
    log "saved $archive ($(du -h "$archive" | cut -f1))"
fi

echo "$IMAGE"
