"""Cost formulas, sensitivity, greedy search and presets."""
import numpy as np
import pytest

from qcnn.layers import softmax
from qcnn.pq import presets
from qcnn.pq.cost import SettingCosts
from qcnn.pq.layer import PQSetting
from qcnn.pq.settings import QuantSettings, quantizable_layers
from qcnn.pq.search import Budget, agreement, greedy_path, search, sensitivity

from test_pq_quantize import tiny_graph


class TinyModel:
    def __init__(self, seed=0):
        self.graph = tiny_graph(seed)

    def probabilities(self, logits):
        return softmax(logits.reshape(len(logits), -1))


def test_search_costs_follow_the_reported_formulas():
    graph = tiny_graph()
    costs = SettingCosts(graph, (16, 16))
    g = costs.layer("grouped", PQSetting(3, 8))   # 3x3, 2 groups of 4 -> 12, on 8x8; M = 2 (padded)
    assert g.dense_macs == 64 * 12 * 9 * 4
    assert g.quant_macs == 64 * 2 * 2 * 8 * 3 + 64 * 12 * 9 * 2
    assert g.quant_bits == 32 * 2 * 2 * 8 * 3 + 3 * 9 * 2 * 12 + 32 * 12
    assert costs.layer("grouped", None).quant_macs == g.dense_macs
    report = costs.report({"fc": PQSetting(4, 4)})
    assert report.dense_bits == 32 * graph.num_params()
    assert report.dense_bits - report.quant_bits == 32 * 240 - (32 * 6 * 4 * 4 + 2 * 6 * 10)


def test_agreement_metrics():
    ref = softmax(np.array([[5.0, 1, 0, 0, 0, 0, -1], [0, 3, 0, 0, 0, 0, 0]]))
    same = agreement(ref, ref)
    assert same == {"agree": 1.0, "keep5": 1.0, "kl": pytest.approx(0.0, abs=1e-9)}
    other = softmax(np.array([[0.0, 5, 4, 3, 2, 1, -1], [0, 3, 0, 0, 0, 0, 0]]))
    m = agreement(ref, other)
    assert m["agree"] == 0.5 and m["keep5"] == 0.5 and m["kl"] > 0.1


def test_greedy_path_prefers_cheap_savings():
    sens = {"a": {PQSetting(2, 4): {"kl": 0.5}}, "b": {PQSetting(2, 4): {"kl": 0.01}, PQSetting(4, 4): {"kl": 0.02}}}
    costs = {("a", None): 100, ("a", PQSetting(2, 4)): 10, ("b", None): 100, ("b", PQSetting(2, 4)): 50,
             ("b", PQSetting(4, 4)): 20}
    path = greedy_path(sens, lambda n, s: costs[(n, s)])
    assert path[0][0] == "b" and path[-1] == ("a", PQSetting(2, 4))
    assert {n for n, _ in path} == {"a", "b"}


def test_sensitivity_and_search_on_a_tiny_model():
    model = TinyModel(2)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((6, 16, 16, 3)).astype(np.float32)
    probe = rng.standard_normal((6, 16, 16, 3)).astype(np.float32)
    ladder = [PQSetting(1, 8), PQSetting(4, 2)]
    cfg = QuantSettings(iterations=1)
    sens = sensitivity(model, calib, probe, ladder, config=cfg)
    assert set(sens) == {q.name for q in quantizable_layers(model.graph)}
    assert all(set(v) == set(ladder) for v in sens.values())
    assert all(m["kl"] >= 0 for v in sens.values() for m in v.values())
    loose = search(model, calib, probe, "compression", Budget(max_kl=10.0), ladder=ladder, sens=sens, config=cfg)
    assert loose.metrics["kl"] <= 10.0 and loose.compression > 1.0
    strict = search(model, calib, probe, "compression", Budget(max_kl=0.0), ladder=ladder, sens=sens, config=cfg)
    assert strict.config.quantized(model.graph) == {} and strict.compression == pytest.approx(1.0)
    assert all(c["met"] == (c["kl"] <= 0.0) for c in strict.checks)


@pytest.mark.parametrize("model_name", ["alexnet", "efficientnet-lite0", "resnet18", "resnet50"])
def test_presets_name_real_layers(model_name):
    from qcnn.models.alexnet import CONVS, FCS
    names = presets.preset_names(model_name)
    assert names
    if model_name == "alexnet":
        assert {"paper", "fast4"} <= set(names)
        layers = [c[0] for c in CONVS] + [f[0] for f in FCS]
    else:
        assert {"accurate", "fast"} <= set(names)
        from qcnn.models import load_model
        layers = [q.name for q in quantizable_layers(load_model(model_name).graph)]
    for name in names:
        cfg = presets.preset(model_name, name)
        assert isinstance(cfg, QuantSettings) and cfg.conv is None and cfg.fc is None
        assert set(dict(cfg.layers)) <= set(layers)
        assert any(s is not None for _, s in cfg.layers)


def test_alexnet_paper_preset_is_the_released_configuration():
    cfg = dict(presets.preset("alexnet", "paper").layers)
    assert cfg["conv1"] == PQSetting(3, 128)
    assert all(cfg[f"conv{i}"] == PQSetting(8, 128) for i in range(2, 6))
    assert cfg["fc6"] == cfg["fc7"] == PQSetting(4, 32)
    assert cfg["fc8"] == PQSetting(1, 16)
    fast = dict(presets.preset("alexnet", "fast4").layers)
    assert fast.get("conv1") is None
    assert all(fast[n] == PQSetting(4, 16) for n in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"))
    with pytest.raises(ValueError):
        presets.preset("alexnet", "nope")


def test_resnet18_accurate_preset_is_what_the_accurate_ladder_searches_and_keeps_its_promise():
    from qcnn.pq.search import LADDERS
    cfg = presets.preset("resnet18", "accurate")
    assert {s for _, s in cfg.layers} <= set(LADDERS["accurate"]) and cfg.error_correction
    notes = presets.NOTES["resnet18"]
    # issue 10: top-5 within 1 point of the float model on the evaluation rows.
    assert notes["dense"]["top5"] - notes["accurate"]["top5"] <= 0.01 + 1e-9
