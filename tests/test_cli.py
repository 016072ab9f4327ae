"""The `qcnn` command line, run in-process through its main()."""
import json
from pathlib import Path

import pytest

from qcnn.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


def test_classify_json_reports_good_and_bad_files(tmp_path, capsys):
    bad = tmp_path / "broken.bmp"
    bad.write_bytes(b"BM" + b"\x00" * 10)
    rc = main(["classify", str(SAMPLES / "coffee.jpg"), str(bad), str(SAMPLES / "cat.bmp"), "--top", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1                                   # a bad file makes the exit status non-zero...
    assert [Path(r["file"]).name for r in out] == ["coffee.jpg", "broken.bmp", "cat.bmp"]  # ...the rest still run
    good = out[0]
    assert good["top"][0] == {"index": 967, "label": "espresso", "prob": pytest.approx(good["top"][0]["prob"])}
    assert len(good["top"]) == 3 and good["latency_ms"] > 0
    assert "broken.bmp" in out[1]["error"] and "top" not in out[1]
    assert out[2]["top"][0]["index"] in range(281, 286)


def test_classify_text_output(capsys):
    assert main(["classify", str(SAMPLES / "coffee.jpg")]) == 0
    text = capsys.readouterr().out
    assert "espresso" in text and "ms)" in text and text.count("%") == 5


def test_classify_alexnet_warns_speed_test_only(capsys):
    assert main(["classify", str(SAMPLES / "coffee.jpg"), "--model", "alexnet", "--top", "1"]) == 0
    assert "speed test only" in capsys.readouterr().err


def test_eval_on_a_small_labelled_folder(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class_index\ncoffee.jpg,967\ncat.bmp,282\nflower.jpg,1\n")
    assert main(["eval", "--images", str(SAMPLES), "--labels", str(labels), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 3
    assert res["dense_top1"] == pytest.approx(2 / 3)      # the flower is not a goldfish
    assert res["dense_top5"] >= res["dense_top1"]


def test_unknown_model_exits_with_a_message(capsys):
    assert main(["classify", str(SAMPLES / "coffee.jpg"), "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
