#!/usr/bin/env bash
# Install the Nextflow version this project is pinned to.
#
# Usage:
#   scripts/install-nextflow.sh [--force] [--method auto|path|launcher|maven]
#   NXF="$(scripts/install-nextflow.sh | tail -n 1)" && "$NXF" run main.nf
#
# The path of the `nextflow` executable to use is printed as the LAST line on
# stdout; progress and diagnostics go to stderr.
#
# Methods, tried in this order by `--method auto` (the default):
#   path      a `nextflow` already on PATH that reports the pinned version is
#             used as it is; nothing is installed.
#   launcher  when the internet is reachable (probe: get.nextflow.io, 5 s), the
#             official launcher is downloaded into .tools/nextflow/launcher/ and
#             run once so that it fetches the pinned jar into
#             .tools/nextflow/framework/<version>/.
#   maven     otherwise the Nextflow core and its dependencies are resolved from
#             Maven Central (the registry stays reachable on offline machines)
#             into .tools/nextflow/lib/, using scripts/nextflow/pom.xml.
# For the last two, scripts/nextflow/nextflow is copied to
# .tools/nextflow/bin/nextflow, the path that gets printed.
#
# Idempotent: once installed, a re-run only compares a stamp file and prints
# the path (well under a second). --force reinstalls.
#
# Environment:
#   NXF_VER              version to install (default: NXF_PINNED_VERSION below)
#   NXF_INSTALL_METHOD   same as --method
#   NXF_MAVEN_ARGS       extra arguments for mvn, e.g. "-o" (offline, from
#                        ~/.m2) or "-Dmaven.repo.local=/path"
#   NXF_PROBE_URL        URL probed for internet access and downloaded as the
#                        official launcher (default https://get.nextflow.io)
#
# Requirements: bash, Java 17-24 (17 or 21 recommended); curl for the launcher
# method; Maven (mvn) for the maven method.
#
# No plugins are installed. A pipeline of this project must not need any
# (no `plugins {}` block, no cloud executors or object-store work dirs): with
# the maven method there is nothing to download them from.
set -euo pipefail

# The pinned version. Bump it here; NXF_VER in the environment overrides it.
NXF_PINNED_VERSION="25.04.4"
VERSION="${NXF_VER:-$NXF_PINNED_VERSION}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SRC_DIR="$ROOT/scripts/nextflow"     # pom.xml and the wrapper template
TOOLS_DIR="$ROOT/.tools"
DEST="$TOOLS_DIR/nextflow"           # the install
STAMP="$DEST/.install-stamp"         # what was installed, for the fast path
PROBE_URL="${NXF_PROBE_URL:-https://get.nextflow.io}"

log() { echo "install-nextflow: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-0}"
}

force=0
method="${NXF_INSTALL_METHOD:-auto}"
while (($#)); do
    case "$1" in
        --force) force=1 ;;
        --method) [[ $# -ge 2 ]] || usage 2; method="$2"; shift ;;
        --method=*) method="${1#--method=}" ;;
        -h | --help) usage 0 ;;
        *) log "unknown argument: $1"; usage 2 ;;
    esac
    shift
done
case "$method" in
    auto | path | launcher | maven) ;;
    *) die "unknown method '$method' (auto, path, launcher or maven)" ;;
esac

# Checksum of a file, to notice edits of the pom or the wrapper template.
checksum() { cksum <"$1" | cut -d' ' -f1; }

# The stamp describes a finished install; all its fields must still hold.
# Installs under .tools record no absolute path, so moving the checkout keeps
# them valid; the `path` method records the executable it found.
expected_stamp() {
    local m="$1" exe="${2:-}"
    printf 'version=%s\nmethod=%s\n' "$VERSION" "$m"
    case "$m" in
        path) printf 'exe=%s\n' "$exe" ;;
        launcher) printf 'wrapper=%s\n' "$(checksum "$SRC_DIR/nextflow")" ;;
        maven) printf 'wrapper=%s\npom=%s\n' "$(checksum "$SRC_DIR/nextflow")" "$(checksum "$SRC_DIR/pom.xml")" ;;
    esac
}

# Fast path: print the executable recorded by a previous run if it is still
# valid. Pure bash plus a few cksum/sed calls: no JVM, no network.
fast_path() {
    [[ $force -eq 0 && -f "$STAMP" ]] || return 1
    local m exe
    m="$(sed -n 's/^method=//p' "$STAMP")"
    [[ "$method" == auto || "$method" == "$m" ]] || return 1
    if [[ "$m" == path ]]; then
        exe="$(sed -n 's/^exe=//p' "$STAMP")"
    else
        exe="$DEST/bin/nextflow"
    fi
    [[ -n "$exe" && -x "$exe" ]] || return 1
    [[ "$(cat "$STAMP")" == "$(expected_stamp "$m" "$exe")" ]] || return 1
    case "$m" in
        path)
            # Still the first nextflow on PATH, and not modified since checked.
            [[ "$(resolve "$(command -v nextflow || true)")" == "$exe" ]] || return 1
            [[ ! "$exe" -nt "$STAMP" ]] || return 1
            ;;
        launcher)
            # The launcher keeps its jar as framework/<ver>/nextflow-<ver>-one.jar.
            compgen -G "$DEST/framework/$VERSION/nextflow-$VERSION-*.jar" >/dev/null || return 1
            ;;
        maven)
            [[ -f "$DEST/lib/nextflow-$VERSION.jar" ]] || return 1
            ;;
    esac
    echo "$exe"
}

# Absolute path with symlinks resolved (readlink -f is not everywhere).
resolve() {
    local p="$1" t
    [[ -n "$p" ]] || return 0
    while [[ -L "$p" ]]; do
        t="$(readlink "$p")"
        [[ "$t" == /* ]] || t="$(dirname "$p")/$t"
        p="$t"
    done
    echo "$(cd "$(dirname "$p")" && pwd -P)/$(basename "$p")"
}

# `nextflow -v` prints "nextflow version 25.04.4.5950": keep "25.04.4".
reported_version() {
    local exe="$1" out
    if command -v timeout >/dev/null 2>&1; then
        out="$(timeout 120 "$exe" -v 2>/dev/null)" || return 1
    else
        out="$("$exe" -v 2>/dev/null)" || return 1
    fi
    out="$(printf '%s\n' "$out" | sed -n 's/^nextflow version \([^ ]*\)\.[0-9][0-9]*$/\1/p' | tail -n 1)"
    [[ -n "$out" ]] && echo "$out"
}

write_stamp() {
    local m="$1" exe="${2:-}" tmp
    mkdir -p "$DEST"
    tmp="$(mktemp "$DEST/.install-stamp.XXXXXX")"
    expected_stamp "$m" "$exe" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$STAMP"
}

if fast_path; then
    exit 0
fi

# --- one installer at a time (e.g. parallel CI jobs sharing a checkout) -------
mkdir -p "$TOOLS_DIR"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS_DIR/.nextflow.lock"
    flock -w 1800 9 || die "timed out waiting for another install to finish"
    # Another run may have completed the install while this one waited.
    if fast_path; then
        exit 0
    fi
fi

# --- Java ----------------------------------------------------------------------
java_cmd="${NXF_JAVA_HOME:+$NXF_JAVA_HOME/bin/java}"
[[ -n "$java_cmd" ]] || java_cmd="${JAVA_HOME:+$JAVA_HOME/bin/java}"
[[ -n "$java_cmd" && -x "$java_cmd" ]] || java_cmd="$(command -v java || true)"
[[ -n "$java_cmd" ]] || die "Java not found: install a JDK 17 or 21 or set JAVA_HOME"
java_major="$("$java_cmd" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9]*\)\(\.[0-9]*\)*.*".*/\1/p' | head -n 1)"
if [[ "$java_major" == 1 ]]; then java_major=8; fi # "1.8.0_x"
[[ -n "$java_major" ]] || die "cannot tell the version of $java_cmd"
((java_major >= 17)) || die "Nextflow $VERSION needs Java 17 or later; $java_cmd is Java $java_major"
((java_major <= 24)) || log "warning: Java $java_major is newer than Nextflow $VERSION is tested with (up to 24)"

# --- staging: build the new install next to the old one, then swap -------------
stage=''
cleanup() { [[ -z "$stage" ]] || rm -rf "$stage"; }
trap cleanup EXIT

new_stage() {
    cleanup
    stage="$(mktemp -d "$TOOLS_DIR/.nextflow-staging.XXXXXX")"
    chmod 0755 "$stage" # mktemp creates it private
    mkdir -p "$stage/bin"
    cp "$SRC_DIR/nextflow" "$stage/bin/nextflow"
    chmod 0755 "$stage/bin/nextflow"
    echo "$VERSION" >"$stage/VERSION"
}

# Check the staged install, move it into place and record it.
commit_stage() {
    local m="$1" got
    got="$(reported_version "$stage/bin/nextflow")" ||
        { log "the staged nextflow does not start"; return 1; }
    [[ "$got" == "$VERSION" ]] ||
        { log "the staged nextflow reports version '$got', expected $VERSION"; return 1; }
    rm -rf "$DEST.old"
    if [[ -e "$DEST" ]]; then mv "$DEST" "$DEST.old"; fi
    mv "$stage" "$DEST"
    stage=''
    rm -rf "$DEST.old"
    write_stamp "$m"
    log "installed Nextflow $VERSION ($m) in $DEST"
    echo "$DEST/bin/nextflow"
}

# (a) a nextflow on PATH that already is the pinned version.
try_path() {
    local exe
    exe="$(resolve "$(command -v nextflow || true)")"
    [[ -n "$exe" ]] || return 1
    # Our own wrapper being on PATH says nothing about the install's state.
    [[ "$exe" != "$DEST"/* ]] || return 1
    log "checking $exe"
    # Without NXF_VER the official launcher reports its own default version,
    # which is what a plain `nextflow` call will run later.
    local got
    got="$(unset NXF_VER; reported_version "$exe")" || got=''
    if [[ "$got" != "$VERSION" ]]; then
        log "$exe reports version '${got:-?}', not $VERSION"
        return 1
    fi
    write_stamp path "$exe"
    log "using Nextflow $VERSION found on PATH"
    echo "$exe"
}

# (b) the official launcher, when the internet is reachable.
try_launcher() {
    command -v curl >/dev/null 2>&1 || { log "curl not found"; return 1; }
    new_stage
    mkdir -p "$stage/launcher" "$stage/framework"
    # The probe is the download itself: a 5 s limit keeps offline machines
    # (DNS failures, dropped packets) from waiting long.
    if ! curl -fsSL --max-time 5 -o "$stage/launcher/nextflow" "$PROBE_URL" 2>/dev/null; then
        log "$PROBE_URL not reachable"
        return 1
    fi
    grep -q 'NXF_VER' "$stage/launcher/nextflow" ||
        { log "$PROBE_URL did not return the Nextflow launcher"; return 1; }
    chmod 0755 "$stage/launcher/nextflow"
    log "downloading Nextflow $VERSION with the official launcher"
    # The wrapper pins NXF_VER and NXF_DIST; the first call fetches the jar.
    "$stage/bin/nextflow" -download >&2 || { log "the launcher could not fetch $VERSION"; return 1; }
    commit_stage launcher
}

# (c) Maven Central.
try_maven() {
    command -v mvn >/dev/null 2>&1 || { log "Maven (mvn) not found"; return 1; }
    new_stage
    log "resolving io.nextflow:nextflow:$VERSION from Maven Central"
    local -a extra=()
    # shellcheck disable=SC2206  # several blank-separated arguments
    [[ -z "${NXF_MAVEN_ARGS:-}" ]] || extra=($NXF_MAVEN_ARGS)
    # Maven's output is kept aside and shown only on failure (even in batch
    # mode Maven 3.8 prints terminal escape codes).
    local mvn_log="$stage/maven.log"
    if ! mvn -B -q -f "$SRC_DIR/pom.xml" ${extra[@]+"${extra[@]}"} \
        "-Dnextflow.version=$VERSION" "-Dnxf.lib.dir=$stage/lib" \
        dependency:copy-dependencies >"$mvn_log" 2>&1; then
        sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" >&2
        log "Maven could not resolve Nextflow $VERSION (is io.nextflow:nextflow:$VERSION on Maven Central?)"
        return 1
    fi
    rm -f "$mvn_log"
    commit_stage maven
}

case "$method" in
    path) try_path || die "no nextflow $VERSION on PATH" ;;
    launcher) try_launcher || die "installing with the official launcher failed" ;;
    maven) try_maven || die "installing from Maven Central failed" ;;
    auto)
        try_path || try_launcher || try_maven ||
            die "could not install Nextflow $VERSION (see the messages above)"
        ;;
esac
