#!/usr/bin/env bash
# Debian 12 packages that qcnn needs beyond Python itself.
#
#   scripts/install-system-deps.sh          install the missing ones (as root)
#   scripts/install-system-deps.sh --check  list the missing ones, exit 1 if any
#   ... --arm                               the packages of scripts/check-arm.sh instead (CI)
#
# Idempotent: when everything is present it exits at once, without apt-get.
set -euo pipefail

PACKAGES=(
    # Qt 6 (PySide6 wheels) on a bare Debian
    libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1
    libfreetype6 libdbus-1-3 libglib2.0-0
    # xcb platform plugin (X11 desktops)
    libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
    libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1
    libx11-xcb1 libxrender1 libxi6 libsm6 libice6
    # wayland platform plugin (Wayland desktops)
    libwayland-cursor0 libwayland-egl1
    # QtMultimedia: its ffmpeg backend ships its own libav*; libpulse is the
    # only library `ldd` finds missing
    libpulse0
    # a font, or Qt draws no text
    fonts-dejavu-core
    # the cffi C extension, the venv, the Makefile
    gcc python3-dev python3-venv make
)
# scripts/check-arm.sh: NEON kernels cross-compiled (gcc, clang) and run under qemu
ARM_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross clang qemu-user)

mode=install
for arg in "$@"; do
    case "$arg" in
        --check) mode=check ;;
        --arm) PACKAGES=("${ARM_PACKAGES[@]}") ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [--check] [--arm]" >&2; exit 2 ;;
    esac
done

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "system packages: all ${#PACKAGES[@]} present"
    exit 0
fi

install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
echo "system packages missing: ${missing[*]}"

if [[ $mode == check ]]; then
    echo "install them with: sudo apt-get update && sudo $install_cmd" >&2
    exit 1
fi

if ((EUID != 0)); then
    echo "not root; run: sudo apt-get update && sudo $install_cmd" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "+ apt-get update"
apt-get update
echo "+ $install_cmd"
$install_cmd
echo "system packages: installed ${missing[*]}"
