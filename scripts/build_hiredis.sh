#!/usr/bin/env bash
# Build hiredis from a pinned, checksum-verified source release into PREFIX,
# for wheels: scripts/build_hiredis.sh PREFIX
#
# Then build tinytown with TINYTOWN_HIREDIS_PREFIX=PREFIX; auditwheel (Linux)
# or delocate (macOS) copies the shared library into the wheel.
#
# The source: hiredis 1.2.0, as carried (vendor/hiredis, the upstream C files
# with their BSD-3-Clause COPYING) by the sdist of hiredis-py 3.1.0 on PyPI,
# pinned by its sha256 (the one PyPI lists for that file). PyPI is a source
# every builder here reaches; nothing of it is committed to this repository.
# Fetched with pip (`pip download`, by name and version: pip's own index
# settings apply), else straight from PyPI's file URL (curl, wget or urllib).
# HIREDIS_TARBALL=path uses a copy already downloaded (still verified).
# PYTHON: the Python whose pip downloads (default python3).
#
# Output: PREFIX/include/hiredis/*.h, PREFIX/lib/libhiredis.{so.1.1.0,1.1.0.dylib}
# (+ the unversioned link), PREFIX/lib/pkgconfig/hiredis.pc and
# PREFIX/share/licenses/hiredis/COPYING (setup.py puts it in the wheel).
# Environment: CC, CFLAGS, ARCHFLAGS (macOS) are honoured.
set -euo pipefail

HIREDIS_VERSION=1.2.0
HIREDIS_SONAME=1.1.0
SOURCE_URL="https://files.pythonhosted.org/packages/38/e5/789cfa8993ced0061a6ef7ea758302ef5cf3439629bf0d39c85a6ede4641/hiredis-3.1.0.tar.gz"
SOURCE_SHA256=51d40ac3611091020d7dea6b05ed62cb152bff595fa4f931e7b6479d777acf7c
SOURCE_PACKAGE=hiredis==3.1.0           # the same file, for pip
SOURCE_FILE=hiredis-3.1.0.tar.gz
SOURCE_DIR=hiredis-3.1.0/vendor/hiredis

if [ $# -ne 1 ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi
mkdir -p "$1"
PREFIX="$(cd "$1" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/build-hiredis.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say() { printf 'build_hiredis: %s\n' "$*"; }

tarball="${HIREDIS_TARBALL:-$WORK/source.tar.gz}"
if [ -z "${HIREDIS_TARBALL:-}" ] && "${PYTHON:-python3}" -m pip --version >/dev/null 2>&1 \
        && "${PYTHON:-python3}" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
            -d "$WORK/pip" "$SOURCE_PACKAGE" >"$WORK/pip.log" 2>&1 \
        && [ -f "$WORK/pip/$SOURCE_FILE" ]; then
    say "downloaded $SOURCE_FILE with pip"
    tarball="$WORK/pip/$SOURCE_FILE"
elif [ -z "${HIREDIS_TARBALL:-}" ]; then
    say "downloading $SOURCE_URL"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$tarball" "$SOURCE_URL"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$tarball" "$SOURCE_URL"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$SOURCE_URL" "$tarball"
    fi
fi
if command -v sha256sum >/dev/null 2>&1; then
    actual="$(sha256sum "$tarball" | cut -d' ' -f1)"
else
    actual="$(shasum -a 256 "$tarball" | cut -d' ' -f1)"
fi
if [ "$actual" != "$SOURCE_SHA256" ]; then
    say "checksum mismatch for $tarball: got $actual, want $SOURCE_SHA256" >&2
    exit 1
fi
say "sha256 verified ($SOURCE_SHA256)"

tar -xzf "$tarball" -C "$WORK" "$SOURCE_DIR"
src="$WORK/$SOURCE_DIR"
got_version="$(awk '/define HIREDIS_(MAJOR|MINOR|PATCH) /{printf "%s%s", sep, $3; sep="."}' "$src/hiredis.h")"
if [ "$got_version" != "$HIREDIS_VERSION" ]; then
    say "the pinned source is hiredis $got_version, expected $HIREDIS_VERSION" >&2
    exit 1
fi

CC="${CC:-cc}"
# The flags of hiredis's own Makefile that matter (no -pedantic -Werror: a
# newer compiler's new warning must not break a release build).
flags=(-std=c99 -O2 -fPIC -Wall -Wno-missing-field-initializers -g0)
# shellcheck disable=SC2206
flags+=(${CFLAGS:-} ${ARCHFLAGS:-})
objects=()
for name in alloc net hiredis sds async read sockcompat; do
    "$CC" "${flags[@]}" -c "$src/$name.c" -o "$WORK/$name.o"
    objects+=("$WORK/$name.o")
done

mkdir -p "$PREFIX/lib/pkgconfig" "$PREFIX/include/hiredis" "$PREFIX/share/licenses/hiredis"
case "$(uname -s)" in
    Darwin)
        lib="libhiredis.$HIREDIS_SONAME.dylib"
        # shellcheck disable=SC2086
        "$CC" -dynamiclib ${ARCHFLAGS:-} -install_name "$PREFIX/lib/$lib" \
            -o "$PREFIX/lib/$lib" "${objects[@]}"
        ln -sf "$lib" "$PREFIX/lib/libhiredis.dylib"
        ;;
    *)
        lib="libhiredis.so.$HIREDIS_SONAME"
        "$CC" -shared -Wl,-soname,"$lib" -o "$PREFIX/lib/$lib" "${objects[@]}"
        ln -sf "$lib" "$PREFIX/lib/libhiredis.so"
        ;;
esac
for header in hiredis.h async.h read.h sds.h alloc.h sockcompat.h; do
    cp "$src/$header" "$PREFIX/include/hiredis/"
done
cp "$src/COPYING" "$PREFIX/share/licenses/hiredis/COPYING"
cat >"$PREFIX/lib/pkgconfig/hiredis.pc" <<PC
prefix=$PREFIX
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: hiredis
Description: Minimalistic C client library for Redis.
Version: $HIREDIS_VERSION
Libs: -L\${libdir} -lhiredis
Cflags: -I\${includedir}/hiredis -D_FILE_OFFSET_BITS=64
PC
say "hiredis $HIREDIS_VERSION installed in $PREFIX ($lib)"
