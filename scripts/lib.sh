# Shared by scripts/serve and scripts/test: a virtualenv with gbmedia installed.
# Works on a fresh Debian 12 with Python 3.11; installs python3-venv when missing
# and it may (root with apt-get).

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_install() {
  command -v apt-get >/dev/null || return 1
  as_root apt-get update -qq >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Debian's coturn, without the system-wide service its package enables (an unconfigured TURN
# server on port 3478): gbmedia starts its own, configured, as a child of the node.
install_coturn() {
  apt_install coturn || return 1
  if command -v systemctl >/dev/null; then as_root systemctl disable --now coturn >/dev/null 2>&1 || true; fi
}

# The native RTP fan-out (gbmedia/sfu/_fanout.c) builds with gcc, Python's headers and Debian's
# libsrtp2-dev; without them the package installs anyway and forwards in Python.
ensure_native_build_deps() {
  local py=${PYTHON:-python3} missing=()
  command -v gcc >/dev/null || missing+=(gcc)
  [ -f /usr/include/srtp2/srtp.h ] || missing+=(libsrtp2-dev)
  "$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
    || missing+=(python3-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (for the native RTP fan-out)..." >&2
    apt_install "${missing[@]}" || echo "${missing[*]} cannot be installed; RTP is forwarded in Python" >&2
  fi
}

# An editable install does not rebuild the extensions when their source changes: build them in
# place when one is missing or older than its source (gbmedia/sfu/_fanout.c, gbmedia/sfu/_remb.c).
build_native() {
  local built stale="" name
  for name in _fanout _remb; do
    built=$(ls gbmedia/sfu/$name*.so 2>/dev/null | head -1 || true)
    if [ -z "$built" ] || [ gbmedia/sfu/$name.c -nt "$built" ]; then stale=1; fi
  done
  if [ -n "$stale" ]; then
    .venv/bin/python -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null \
      || .venv/bin/python -m pip install -q "setuptools>=77"
    .venv/bin/python setup.py -q build_ext --inplace >/dev/null 2>&1 \
      || echo "the native RTP fan-out did not build; RTP is forwarded in Python" >&2
  fi
}

ensure_venv() {  # $1: pip extras spec, e.g. "." or ".[dev]"
  local py=${PYTHON:-python3}
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "gbmedia needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; return 1
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
      echo "installing python3-venv..." >&2
      apt_install python3-venv || { echo "python3-venv is missing and cannot be installed" >&2; return 1; }
    fi
    "$py" -m venv .venv
  fi
  # Reinstall only when the project's dependencies changed.
  local stamp=.venv/.gbmedia-installed want
  want="$1 $(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing gbmedia $1 into .venv..." >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e "$1"
    echo "$want" > "$stamp"
  fi
}
