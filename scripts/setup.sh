#!/usr/bin/env bash
# One-command set-up on a fresh Debian 12 machine with Python 3.11:
#   system packages (nginx, ffmpeg, espeak-ng, libsndfile, chromium, docker-compose, wrk)
#   and a virtual environment in .venv with kws and its dev/test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nginx ffmpeg espeak-ng libsndfile1 chromium docker-compose wrk git gettext-base)
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "set-up done: activate with 'source .venv/bin/activate'"
