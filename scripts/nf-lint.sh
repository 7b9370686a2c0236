#!/usr/bin/env bash
# Static check of the pipeline with Nextflow's own strict-syntax parser.
#
# Usage:
#   scripts/nf-lint.sh                    # main.nf, nextflow.config, conf/, modules/,
#                                         # workflows/, subworkflows/ (repo root)
#   scripts/nf-lint.sh [-o MODE] PATH...  # these files or folders (*.nf, *.config);
#                                         # MODE: full (default), extended, concise
#
# This is `nextflow lint` of the pinned Nextflow (the strict parser of nf-lang
# and its analysis: syntax, undefined names, includes, process and workflow
# structure, config settings), run through scripts/nextflow/NfLint.java
# because Nextflow 25.04.4's own `lint` command stops with a
# NullPointerException on the first file that has errors but no warnings (fixed
# in 25.04.5, which is not on Maven Central). With a Nextflow whose `lint`
# works, `nextflow lint main.nf nextflow.config conf modules workflows
# subworkflows` reports the same.
#
# Exit status: 0 no errors (warnings are printed), 1 errors, 2 no Nextflow.
# Needs Java 17+ (the driver runs as a single-file source program).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
NXF_DIR="$ROOT/.tools/nextflow"

die() {
    echo "nf-lint: error: $*" >&2
    exit 2
}

case "${1:-}" in -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
esac

"$ROOT/scripts/install-nextflow.sh" >/dev/null || die "scripts/install-nextflow.sh failed"
version="$(cat "$NXF_DIR/VERSION")"
if [[ -f "$NXF_DIR/lib/nextflow-$version.jar" ]]; then
    classpath="$NXF_DIR/lib/*"                    # installed from Maven Central
else
    classpath="$(compgen -G "$NXF_DIR/framework/$version/nextflow-$version-*.jar" | head -n 1 || true)"
    [[ -n "$classpath" ]] || die "no Nextflow jars in $NXF_DIR (installed with another method?)"
fi

java="${NXF_JAVA_HOME:-${JAVA_HOME:-}}"
java="${java:+$java/bin/java}"
java="${java:-$(command -v java || true)}"
[[ -n "$java" ]] || die "java not found (set JAVA_HOME)"

options=()
if [[ "${1:-}" == -o ]]; then
    options=(-o "${2:-full}")
    shift 2 || shift
fi
if (($# == 0)); then
    cd "$ROOT" # paths in the report relative to the repository
    set -- main.nf nextflow.config conf modules workflows subworkflows
fi
exec "$java" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$classpath" "$ROOT/scripts/nextflow/NfLint.java" ${options[@]+"${options[@]}"} "$@"
