#!/usr/bin/env bash
# The Python client's CI: installs what a fresh machine lacks (redis-server, the package and its
# test extras), then runs its tests, the cross-language ones included (they build the Rust
# binaries they drive with cargo).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is missing: installing it"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server
fi
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'
"$PYTHON" -m mypy --strict relock_redis
"$PYTHON" -m pytest -q -p no:cacheprovider tests "$@"
