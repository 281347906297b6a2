#!/usr/bin/env bash
# Install Google Research Football (gfootball 2.10.2) into the active Python environment.
# Its C++ engine builds from source: ~10-15 min on 2 cores the first time; pip caches the wheel after that.
#   bash scripts/install_football.sh            # Debian packages (needs root or sudo) + the `football` extra
#   SKIP_APT=1 bash scripts/install_football.sh # the system packages are already there
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

packages=(libgl1-mesa-dev libsdl2-dev libsdl2-image-dev libsdl2-ttf-dev libsdl2-gfx-dev libboost-thread-dev
          libboost-system-dev libboost-filesystem-dev libboost-python-dev cmake build-essential)
if [ -z "${SKIP_APT:-}" ]; then
  missing=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    echo "install_football: apt-get install ${missing[*]}"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi
# gfootball's setup.py imports psutil and needs setuptools/wheel from the environment itself, so it is built
# without build isolation; gym 0.26 changed reset(), and six is an undeclared dependency (both pinned by the extra).
python -m pip install -q psutil "setuptools>=68" wheel
python -m pip install -q --no-build-isolation -e "${root}[football]"
python -c "import gfootball.env; print('install_football: gfootball', __import__('importlib.metadata').metadata.version('gfootball'), 'ok')"
