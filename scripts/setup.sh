#!/usr/bin/env bash
# One-command set-up on a fresh Debian 12 machine with Python 3.11:
#   system packages (nginx, ffmpeg, espeak-ng, flite, festival, libsndfile, chromium, docker-compose, wrk, postgresql)
#   and a virtual environment in .venv with kws and its dev/test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: the tracking-server test runs a throw-away PostgreSQL as MLflow's backend store.
# flite, festival and its English voices: with espeak-ng, the TTS engines of the negatives (kws.negatives).
APT_PACKAGES=(nginx ffmpeg espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
              libsndfile1 libportaudio2 chromium docker-compose wrk git gettext-base postgresql)
# Seconds to wait for another apt/dpkg (unattended-upgrades, a second shell) to release its locks
# instead of failing at once.
APT_LOCK_WAIT_S="${APT_LOCK_WAIT_S:-600}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # apt-get waiting for the locks: DPkg::Lock::Timeout makes `install` wait for dpkg's lock; apt 2.6
  # `update` does not apply it to the lists lock, so a busy lock is also retried here until the deadline.
  apt_get() {
    local deadline=$((SECONDS + APT_LOCK_WAIT_S)) err rc
    err="$(mktemp)"
    while :; do
      rc=0
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o "DPkg::Lock::Timeout=$APT_LOCK_WAIT_S" "$@" 2>"$err" || rc=$?
      if ((rc)) && grep -q "Could not get lock" "$err" && ((SECONDS < deadline)); then
        echo "apt-get $1: $(grep -m1 "Could not get lock" "$err"); waiting for it..." >&2
        sleep 2
        continue
      fi
      cat "$err" >&2
      rm -f "$err"
      return "$rc"
    done
  }
  echo "installing Debian packages: ${missing[*]}"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "set-up done: activate with 'source .venv/bin/activate'"
