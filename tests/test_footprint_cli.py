"""Every footprint number the app shows equals what `qcnn cost --json` prints (issue 14 item 2).

The app's footprint tab shows `qcnn.workbench.footprint(...)`, laid out by app.ui.footprint's
FootprintView.  For the same model, settings and kernel: the report behind the tab equals the
CLI's JSON in every field of every layer and every total, and each cell and figure of the tab is
that number as printed (to the digits the cell shows).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onnx_models import mini_alexnet
from qcnn import workbench as wb
from qcnn.cli import main
from qcnn.models import load_model
from qcnn.pq.engine import with_kernel
from qcnn.pq.settings import QuantSettings, quantizable_layers


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QCNN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _tiny(tmp: Path) -> tuple[str, dict]:
    """The mini AlexNet (grouped conv, LRN, pools, two FC) with three of its four layers quantized:
    K = 16 and K = 32, so fast-scan and exact layers both appear."""
    path = mini_alexnet(tmp / "tiny.onnx")
    names = [layer.name for layer in quantizable_layers(load_model(path).graph)]
    return str(path), {"layers": {names[1]: {"dsub": 4, "ksub": 16}, names[2]: {"dsub": 4, "ksub": 16},
                                  names[3]: {"dsub": 2, "ksub": 32}}, "error_correction": False}


def _lite0(tmp: Path) -> tuple[str, dict]:
    """EfficientNet-Lite0 with its head and FC layer quantized: a real network, 80 rows."""
    return "efficientnet-lite0", {"layers": {"head": {"dsub": 4, "ksub": 16}, "fc": {"dsub": 8, "ksub": 32}},
                                  "error_correction": False}


@pytest.fixture(scope="module", params=["tiny", "lite0"])
def case(request, tmp_path_factory, cache):
    tmp = tmp_path_factory.mktemp(request.param)
    spec, config = (_tiny if request.param == "tiny" else _lite0)(tmp)
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    model = load_model(spec)
    bench = wb.Workbench(model)
    quantized = bench.quantize(QuantSettings.from_dict(config))
    return spec, path, model, quantized


def cli_cost(capsys, spec, config, kernel) -> dict:
    assert main(["cost", "--model", spec, "--config", str(config), "--kernel", kernel, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kernel", ["exact", "fastscan", "reconstructed"])
def test_the_footprint_report_is_the_cli_json(case, capsys, kernel):
    spec, config, model, quantized = case
    cli = cli_cost(capsys, spec, config, kernel)
    fp = wb.footprint(model, model.graph, quantized, with_kernel(quantized.graph, kernel))
    mine = fp.report.to_json()
    assert set(cli) - set(mine) == {"model", "setting"}
    for key in mine:
        if key != "layers":
            assert mine[key] == pytest.approx(cli[key]), key
    assert [layer["name"] for layer in mine["layers"]] == [layer["name"] for layer in cli["layers"]]
    for ours, theirs in zip(mine["layers"], cli["layers"]):
        assert set(ours) == set(theirs)
        for field in ours:
            assert ours[field] == pytest.approx(theirs[field]), (ours["name"], field)
    assert {layer["kernel"] for layer in cli["layers"] if layer["quantized"]} <= {kernel, "exact"}
    assert fp.dense_storage_bytes == cli["dense_bits"] // 8
    assert fp.quant_file_bytes == quantized.path.stat().st_size


# --------------------------------------------------------------------------- the tab itself

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _number(text: str) -> tuple[float, float]:
    """(value, half a unit of its last printed digit) of a cell like '12.34', '3.1x', '1.25 MiB'."""
    m = re.fullmatch(r"\s*(-?[\d,]+(?:\.(\d+))?)\s*(x|×|B|KiB|MiB|GiB|M)?(?:\s*\(.*\))?\s*", text)
    assert m, f"not a number: {text!r}"
    decimals = len(m.group(2) or "")
    scale = _UNITS.get(m.group(3) or "", 1)
    return float(m.group(1).replace(",", "")) * scale, 0.5 * 10 ** -decimals * scale * 1.000001


def _same(text: str, value: float, what: str) -> None:
    shown, slack = _number(text)
    assert abs(shown - value) <= slack, f"{what}: shows {text!r}, cost says {value}"


# column -> what of `qcnn cost --json`'s layer it must show (None: the measured column, not a cost)
COLUMNS = {
    "layer": lambda c: c["name"],
    "kind": lambda c: c["kind"],
    "C_s'/K": lambda c: f"{c['setting']['dsub']}/{c['setting']['ksub']}" if c["setting"] else "-",
    "output": lambda c: "x".join(map(str, c["out_shape"])),
    "dense MMAC": lambda c: c["dense_macs"] / 1e6,
    "PQ MMAC": lambda c: c["quant_macs"] / 1e6,
    "speed-up (theory)": lambda c: c["speedup"],
    "speed-up (measured)": None,
    "dense KiB": lambda c: c["dense_bits"] / 8192,
    "PQ KiB": lambda c: c["quant_bits"] / 8192,
    "compression": lambda c: c["compression"],
    "kernel": lambda c: c["kernel"],
}


def _grid(grid) -> dict[str, list[str]]:
    """Row label -> the texts of the other cells of a QGridLayout of QLabels."""
    rows: dict[int, dict[int, str]] = {}
    for i in range(grid.count()):
        r, c, _, _ = grid.getItemPosition(i)
        rows.setdefault(r, {})[c] = grid.itemAt(i).widget().text()
    return {cells[0]: [cells[c] for c in sorted(cells) if c] for cells in rows.values() if 0 in cells}


def test_every_cell_of_the_footprint_tab_is_the_cli_number(case, capsys, qtbot):
    from app.ui.footprint import LAYER_COLUMNS, FootprintView
    spec, config, model, quantized = case
    cli = cli_cost(capsys, spec, config, "exact")
    view = FootprintView()
    qtbot.addWidget(view)
    view.show_footprint(wb.footprint(model, model.graph, quantized, with_kernel(quantized.graph, "exact")))

    unknown = set(LAYER_COLUMNS) - set(COLUMNS)
    assert not unknown, f"new footprint columns {unknown}: say here which cost figure each shows"
    assert view.table.rowCount() == len(cli["layers"])
    for row, layer in enumerate(cli["layers"]):
        for col, name in enumerate(LAYER_COLUMNS):
            want, text = COLUMNS[name], view.table.item(row, col).text()
            if want is None:
                continue
            value = want(layer)
            if isinstance(value, str):
                assert text == value, (layer["name"], name)
            else:
                _same(text, value, f"{layer['name']} {name}")

    memory = cli["memory"]
    figures = {"dense weights": cli["dense_bits"] // 8, "compression": cli["compression"],
               "dense MMAC": cli["dense_macs"] / 1e6, "PQ MMAC": cli["quant_macs"] / 1e6,
               "theoretical speed-up": cli["theoretical_speedup"], "quantized file": quantized.path.stat().st_size,
               "storage ratio": (cli["dense_bits"] // 8) / quantized.path.stat().st_size}
    assert set(view.values) == set(figures)
    for name, value in figures.items():
        _same(view.values[name], value, name)
    rows = _grid(view.memory_grid)
    for label, (dense, quant) in {"weights": ("dense_weight_bytes", "quant_weight_bytes"),
                                  "peak activations": ("dense_activation_bytes", "quant_activation_bytes"),
                                  "total": ("dense_runtime_bytes", "quant_runtime_bytes")}.items():
        _same(rows[label][0], memory[dense], f"memory {label} dense")
        _same(rows[label][1], memory[quant], f"memory {label} quantized")
    _same(rows["lookup tables"][1], memory["table_bytes"], "memory lookup tables")
    assert (memory["table_layer"] or "") in rows["lookup tables"][1]
