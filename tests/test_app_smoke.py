"""Launching: the screenshot mode of `main`, the entry points and the desktop-entry installer."""
import configparser
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from app.window import main

REPO = Path(__file__).resolve().parent.parent


def gradient_bmp(path):
    image = Image.new("RGB", (64, 48))
    image.putdata([(4 * x, 5 * y, 128) for y in range(48) for x in range(64)])
    image.save(path, format="BMP")
    return path


def test_screenshot_mode_waits_for_both_engines_then_saves_the_window(qapp, tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path / "cache"))
    shot = tmp_path / "window.png"
    argv = [str(gradient_bmp(tmp_path / "g.bmp")), "--screenshot", str(shot), "--size", "1400x820",
            "--conv", "dense", "--fc", "16/16", "--no-error-correction"]
    assert main(argv) == 0
    assert Image.open(shot).size == (1400, 820)
    assert list((tmp_path / "cache" / "quantized").glob("efficientnet-lite0-*.qcnn"))


def test_entry_points_name_app_window_main():
    text = (REPO / "pyproject.toml").read_text()
    assert 'qcnn-app = "app.window:main"' in text
    assert "from app.window import main" in (REPO / "main.py").read_text()
    out = subprocess.run([sys.executable, str(REPO / "main.py"), "--help"], capture_output=True, text=True,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, timeout=60)
    assert out.returncode == 0 and "--screenshot" in out.stdout


def test_desktop_entry_installer_writes_entry_and_icon(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "share")}
    subprocess.run(["bash", str(REPO / "scripts" / "install-desktop-entry.sh")], env=env, check=True,
                   capture_output=True)
    entry = tmp_path / "share" / "applications" / "qcnn.desktop"
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(entry)
    desktop = parser["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Icon"] == "qcnn" and desktop["Terminal"] == "false"
    assert ("qcnn-app" in desktop["Exec"] or "main.py" in desktop["Exec"]) and desktop["Exec"].endswith("%f")
    assert (tmp_path / "share" / "icons" / "hicolor" / "scalable" / "apps" / "qcnn.svg").is_file()
    assert (tmp_path / "share" / "icons" / "hicolor" / "256x256" / "apps" / "qcnn.png").is_file()

    subprocess.run(["bash", str(REPO / "scripts" / "install-desktop-entry.sh"), "--uninstall"], env=env,
                   check=True, capture_output=True)
    assert not entry.exists()
