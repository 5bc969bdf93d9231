#!/usr/bin/env bash
# The sanitizer job: build the extension with AddressSanitizer and
# UndefinedBehaviorSanitizer, against hiredis 0.14 (the system's, Debian 12)
# and hiredis 1.2 (scripts/build_hiredis.sh, itself built with the sanitizers:
# the version the wheels ship), and run the transport, reply-fuzz, reconnect
# and cancellation tests on each. Exit status 0 only if every run passed and
# no sanitizer reported anything.
#
#   scripts/sanitize.sh                      # both hiredis versions, the default tests
#   scripts/sanitize.sh tests/test_x.py -k y # other tests (pytest arguments)
#   SANITIZE=none scripts/sanitize.sh        # the same builds without sanitizers
#                                            # (e.g. to run the tests on hiredis 1.2)
#
# Environment: HIREDIS_VERSIONS ("0.14 1.2"), HIREDIS12_PREFIX (a hiredis 1.2
# already built by scripts/build_hiredis.sh: reused instead of building one),
# SANITIZE_DIR (work directory, default build/sanitize; reused between runs),
# TT_FUZZ_EXAMPLES (default 100), CC (default gcc).
#
# How: each build goes to SANITIZE_DIR/<variant>/lib/tinytown (the compiled
# module plus symlinks to src/tinytown/**/*.py, so the checkout's in-place
# build is left alone) which is put first on PYTHONPATH. Python itself is not
# instrumented, so libasan (and libubsan) are LD_PRELOADed; PYTHONMALLOC=malloc
# lets ASan see every Python allocation. Leak detection is off: the
# interpreter keeps memory until exit on purpose (the leak tests and
# scripts/valgrind.sh cover leaks). UBSan stops at the first report.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || scripts/bootstrap.sh
CC="${CC:-gcc}"
SANITIZE="${SANITIZE:-address,undefined}"
WORK="${SANITIZE_DIR:-$ROOT/build/sanitize}"
VERSIONS="${HIREDIS_VERSIONS:-0.14 1.2}"
say() { printf 'sanitize: %s\n' "$*"; }

# The tests, in one pytest run per group: the transport-level tests whole,
# then the channel tests that cancel, drop or close things (-k applies to a
# whole run). With arguments: one run of exactly those.
if [ "$#" -eq 0 ]; then
    # (not the leak tests: ASan's quarantine of freed memory makes RSS grow;
    # they run in the normal suite and under scripts/valgrind.sh)
    group1=(tests/test_transport_core.py tests/test_reply_fuzz.py tests/test_misuse.py tests/test_reconnect.py tests/test_codec.py
            tests/test_cancel_pops.py tests/test_blocking_cancel.py -k "not leak")
    group2=(tests/test_channel.py tests/test_sync_channel.py
            -k "cancel or close or drop or lost or reconnect or interrupt or timeout")
    ngroups=2
else
    group1=("$@")
    ngroups=1
fi

if [ "$SANITIZE" = none ]; then
    san_flags=()
    preload=""
    suffix=plain
else
    san_flags=(-fsanitize="$SANITIZE" -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g)
    preload="$("$CC" -print-file-name=libasan.so)"
    case "$SANITIZE" in *undefined*) preload="$preload:$("$CC" -print-file-name=libubsan.so)";; esac
    suffix=asan
fi

# build VARIANT PREFIX: the extension against the hiredis in PREFIX ("" = pkg-config)
build() {
    local variant="$1" prefix="$2" dir="$WORK/$1"
    mkdir -p "$dir/lib/tinytown/_transport" "$dir/tmp"
    say "building the extension ($variant)"
    (
        export CC CFLAGS="${san_flags[*]:-}" LDFLAGS="${san_flags[*]:-}" LDSHARED="$CC -shared"
        if [ -n "$prefix" ]; then export TINYTOWN_HIREDIS_PREFIX="$prefix"; else unset TINYTOWN_HIREDIS_PREFIX; fi
        "$PY" setup.py -q build_ext --build-lib "$dir/lib" --build-temp "$dir/tmp" >"$dir/build.log" 2>&1
    ) || { cat "$dir/build.log" >&2; say "build failed ($variant)"; exit 1; }
    for f in "$ROOT"/src/tinytown/*.py "$ROOT"/src/tinytown/py.typed; do
        ln -sf "$f" "$dir/lib/tinytown/"
    done
    for f in "$ROOT"/src/tinytown/_transport/*.py; do
        ln -sf "$f" "$dir/lib/tinytown/_transport/"
    done
}

status=0
total_passed=0
total_failed=0
for version in $VERSIONS; do
    prefix=""
    if [ "$version" = 1.2 ]; then
        prefix="${HIREDIS12_PREFIX:-$WORK/hiredis-1.2-$suffix}"
        if [ ! -f "$prefix/lib/libhiredis.so" ]; then
            say "building hiredis 1.2 into $prefix"
            CC="$CC" CFLAGS="${san_flags[*]:-}" scripts/build_hiredis.sh "$prefix" >/dev/null
        fi
    elif [ "$version" != 0.14 ]; then
        say "unknown hiredis version $version (0.14 or 1.2)"; exit 2
    fi
    variant="hiredis-$version-$suffix"
    build "$variant" "$prefix"
    log="$WORK/$variant/tests.log"
    rm -f "$WORK/$variant"/asan.* "$WORK/$variant"/ubsan.* "$log"
    say "running the tests on hiredis $version ($SANITIZE); log: $log"
    run_status=0
    for g in $(seq 1 "$ngroups"); do
        declare -n args="group$g"
        for attempt in 1 2; do
            start=$(stat -c %s "$log" 2>/dev/null || echo 0)   # this run's part of the shared log
            group_status=0
            env PYTHONPATH="$WORK/$variant/lib${PYTHONPATH:+:$PYTHONPATH}" \
                TINYTOWN_TRANSPORT=hiredis TT_FUZZ_EXAMPLES="${TT_FUZZ_EXAMPLES:-100}" \
                ${preload:+LD_PRELOAD="$preload"} ${preload:+PYTHONMALLOC=malloc} \
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:log_path=$WORK/$variant/asan:${ASAN_OPTIONS:-}" \
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/$variant/ubsan:${UBSAN_OPTIONS:-}" \
                "$PY" -m pytest -q -p no:cacheprovider -o addopts= "${args[@]}" >>"$log" 2>&1 || group_status=$?
            part="$(tail -c +$((start + 1)) "$log")"
            # One known artefact of the sanitizer runtime, not of tinytown: a
            # redis-server started by a test just after another test's thread
            # ended can hang between fork and exec (ASan's allocator locked
            # in the child; about 1 run in 10 of group 2, on either hiredis).
            # Such a run, and only such a run, is run once more.
            if [ "$group_status" != 0 ] && [ "$attempt" = 1 ] \
                    && grep -q "Timeout (>" <<<"$part" && grep -q "errpipe_read" <<<"$part" \
                    && [ "$(grep -cE "^(FAILED|ERROR) " <<<"$part")" = 1 ]; then
                say "  a child process hung between fork and exec (sanitizer runtime); running this group again"
                continue
            fi
            break
        done
        [ "$group_status" = 0 ] || run_status=$group_status
        unset -n args
        summary="$(grep -E "(passed|failed|error).* in [0-9.]+s" <<<"$part" | tail -n 1 || true)"
        # (no summary line when the interpreter died: say so, with the last test it was running)
        if [ -n "$summary" ]; then
            say "  $summary"
        else
            say "  no pytest summary (exit $run_status): the interpreter died"
            tail -n 3 <<<"$part" | sed 's/^/sanitize:   | /'
        fi
        grep -E "^Fatal Python error|Assertion .* failed" <<<"$part" | head -n 3 | sed 's/^/sanitize:   /' || true
        n="$(grep -oE "[0-9]+ passed" <<<"$summary" | awk '{s += $1} END {print s + 0}' || true)"
        total_passed=$((total_passed + n))
        n="$(grep -oE "[0-9]+ (failed|errors?)" <<<"$summary" | awk '{s += $1} END {print s + 0}' || true)"
        total_failed=$((total_failed + n))
        [ "$run_status" = 0 ] || [ -n "$summary" ] || total_failed=$((total_failed + 1))  # died: count it
    done
    reports=$(cat "$WORK/$variant"/asan.* "$WORK/$variant"/ubsan.* 2>/dev/null | grep -c -E "ERROR: AddressSanitizer|runtime error:" || true)
    # the loaded module must be the instrumented one
    env PYTHONPATH="$WORK/$variant/lib" ${preload:+LD_PRELOAD="$preload"} ASAN_OPTIONS=detect_leaks=0 \
        "$PY" -c 'import sys, tinytown._transport.ext as t; sys.exit(not t.__file__.startswith(sys.argv[1]))' \
        "$WORK/$variant/lib" || { say "the tests did not load the build in $WORK/$variant"; status=1; }
    say "hiredis $version: tests exit $run_status, sanitizer reports: $reports"
    if [ "$reports" != 0 ]; then
        cat "$WORK/$variant"/asan.* "$WORK/$variant"/ubsan.* 2>/dev/null | head -n 60 >&2
        rm -f "$WORK/$variant"/asan.* "$WORK/$variant"/ubsan.*
        status=1
    fi
    [ "$run_status" = 0 ] || status=1
done
[ "$status" = 0 ] && say "clean" || say "FAILED"
# The closing line, in the form CI reads: every run of every hiredis version.
echo "sanitize: $total_passed passed, $total_failed failed"
exit "$status"
