#!/usr/bin/env bash
# Add qcnn to the Linux desktop's application menu (freedesktop.org desktop entry + icon), for
# the current user only: no root needed.
#
#   scripts/install-desktop-entry.sh               install (or update)
#   scripts/install-desktop-entry.sh --uninstall   remove again
#   scripts/install-desktop-entry.sh --exec CMD    launch CMD instead of the detected one
#
# Writes $XDG_DATA_HOME/applications/qcnn.desktop (default ~/.local/share/applications) and the
# icon into the hicolor theme there.  The launcher is the venv's `qcnn-app` when the project is
# installed in .venv (`make demo` does that), else `python3 main.py` of this checkout.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
apps="$data/applications"
icons="$data/icons/hicolor"
entry="$apps/qcnn.desktop"
exec_cmd=""
uninstall=0

while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) uninstall=1 ;;
        --exec) shift; exec_cmd="${1:?--exec needs a command}" ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

refresh() {
    # Menus pick the change up by themselves on most desktops; these make it immediate.
    command -v update-desktop-database >/dev/null && update-desktop-database -q "$apps" 2>/dev/null || true
    # Only refresh an icon cache that already exists: creating one would go stale and hide icons
    # that other programs install later.
    if [ -f "$icons/icon-theme.cache" ] && command -v gtk-update-icon-cache >/dev/null; then
        gtk-update-icon-cache -q -t "$icons" 2>/dev/null || true
    fi
}

if [ "$uninstall" = 1 ]; then
    rm -f "$entry" "$icons/scalable/apps/qcnn.svg" "$icons/256x256/apps/qcnn.png"
    refresh
    echo "removed $entry"
    exit 0
fi

# Desktop entry Exec= rules: arguments with spaces or specials are double-quoted, and
# backslash, double quote, backtick and dollar are escaped inside the quotes.
quote() {
    local s="$1"
    s="${s//\\/\\\\}"; s="${s//\"/\\\"}"; s="${s//\`/\\\`}"; s="${s//\$/\\\$}"
    printf '"%s"' "$s"
}

if [ -z "$exec_cmd" ]; then
    if [ -x "$repo/.venv/bin/qcnn-app" ]; then
        exec_cmd="$(quote "$repo/.venv/bin/qcnn-app")"
    elif [ -x "$repo/.venv/bin/python" ]; then
        exec_cmd="$(quote "$repo/.venv/bin/python") $(quote "$repo/main.py")"
    else
        exec_cmd="python3 $(quote "$repo/main.py")"
    fi
fi

mkdir -p "$apps" "$icons/scalable/apps" "$icons/256x256/apps"
install -m 644 "$repo/assets/icons/qcnn.svg" "$icons/scalable/apps/qcnn.svg"
install -m 644 "$repo/assets/icons/qcnn.png" "$icons/256x256/apps/qcnn.png"

tmp="$(mktemp "$apps/.qcnn.desktop.XXXXXX")"
cat > "$tmp" <<EOF
[Desktop Entry]
Type=Application
Version=1.0
Name=qcnn
GenericName=Quantized-CNN workbench
Comment=Classify photos with a dense CNN and its product-quantized version, side by side
Exec=$exec_cmd %f
Path=$repo
Icon=qcnn
Terminal=false
Categories=Science;ArtificialIntelligence;ImageProcessing;Qt;
Keywords=CNN;quantization;classification;neural network;
MimeType=image/bmp;image/png;image/jpeg;image/gif;image/tiff;image/webp;
StartupWMClass=qcnn
EOF
chmod 644 "$tmp"
mv "$tmp" "$entry"
refresh
echo "installed $entry"
echo "  Exec=$exec_cmd %f"
