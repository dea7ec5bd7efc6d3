#!/usr/bin/env bash
# Installs NVRTC 11.8 (Debian non-free package libnvrtc11.2) so the CUDA kernels can be compiled to PTX/CUBIN
# on a machine without a GPU. Idempotent: a second run changes nothing. Needs root (or sudo) and Debian bookworm.
#
# The stock deb822 source lists only `main`; rather than editing it we add a second source file with the
# `contrib non-free` components of the same mirror and suites.
set -euo pipefail

if ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.11\.2'; then
  echo "libnvrtc.so.11.2 already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

SRC=/etc/apt/sources.list.d/debian-nonfree.sources
if [ ! -f "$SRC" ]; then
  $SUDO tee "$SRC" >/dev/null <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  echo "added $SRC"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends libnvrtc11.2
ldconfig -p | grep 'libnvrtc\.so' || { echo "libnvrtc not visible to the loader after install" >&2; exit 1; }
