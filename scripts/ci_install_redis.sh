#!/usr/bin/env bash
# Install redis-server and redis-cli where cibuildwheel builds and tests
# wheels (its before-all step), with whatever package manager is there:
#   musllinux (Alpine)          apk add redis            (Redis 7)
#   manylinux_2_28 (AlmaLinux)  dnf module redis:6       (Redis 6.2: ACL users, cluster)
#   macOS                       brew install redis
#   Debian/Ubuntu               apt-get install redis-server redis-tools
# The test suite starts its own servers (and a three-node cluster) from
# these binaries; nothing is left running.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    redis-server --version
    exit 0
fi
SUDO=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
fi
if command -v apk >/dev/null 2>&1; then
    "${SUDO[@]}" apk add --no-cache redis
elif command -v dnf >/dev/null 2>&1; then
    "${SUDO[@]}" dnf -y module enable redis:6 || true
    "${SUDO[@]}" dnf -y install redis
elif command -v brew >/dev/null 2>&1; then
    brew install redis
    # Homebrew may start it as a service; the tests start their own.
    brew services stop redis >/dev/null 2>&1 || true
elif command -v apt-get >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools
else
    echo "ci_install_redis: no known package manager to install redis-server with" >&2
    exit 1
fi
redis-server --version
