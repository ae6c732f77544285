"""The evaluation's plot data (goodness of positive/negative data, deactivated-unit ratio, SIP grid), ffkit.plotting
and `ffkit plot`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

import ffkit
from ffkit.cli import main
from ffkit.data import DEBIAN_FASHION_MNIST_DIR
from ffkit.evaluation import (
    ActivityMonitor,
    EvalReport,
    collect_scores,
    dead_unit_ratio,
    make_report,
    mean_goodness,
    range_accuracy,
    range_accuracy_grid,
)
from ffkit.layers import CWConv, FFLayer, LayerOutput

pytest.importorskip("matplotlib")
from ffkit import plotting  # noqa: E402

needs_fmnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)

# Hand example: L = 2 layers, N = 2 samples, K = 3 classes, labels y = [0, 1].
#
#   layer 0: sample 0 [1, 2, 3] (y=0): pos 1, neg (2+3)/2 = 2.5, pred 2 (wrong)
#            sample 1 [0, 4, 2] (y=1): pos 4, neg (0+2)/2 = 1.0, pred 1 (right)
#            -> goodness pos (1+4)/2 = 2.5, neg (2.5+1)/2 = 1.75, accuracy 0.5
#   layer 1: sample 0 [3, 0, 0] (y=0): pos 3, neg 0.0,           pred 0 (right)
#            sample 1 [1, 3, 2] (y=1): pos 3, neg (1+2)/2 = 1.5, pred 1 (right)
#            -> goodness pos 3.0, neg 0.75, accuracy 1.0
#   layers 0..1: sample 0 [4, 2, 3] -> 0 (right), sample 1 [1, 7, 4] -> 1 (right): accuracy 1.0
#   grid: [[0.5, 1.0], [None, 1.0]]
HAND_SCORES = torch.tensor(
    [
        [[1.0, 2.0, 3.0], [0.0, 4.0, 2.0]],
        [[3.0, 0.0, 0.0], [1.0, 3.0, 2.0]],
    ]
)
HAND_LABELS = torch.tensor([0, 1])


def test_mean_goodness_hand_example():
    pos, neg = mean_goodness(HAND_SCORES, HAND_LABELS)
    assert pos == pytest.approx([2.5, 3.0])
    assert neg == pytest.approx([1.75, 0.75])


def test_sip_grid_hand_example():
    grid = range_accuracy_grid(HAND_SCORES, HAND_LABELS)
    assert grid.shape == (2, 2) and math.isnan(grid[1, 0].item())
    assert grid[0, 0].item() == 0.5 and grid[0, 1].item() == 1.0 and grid[1, 1].item() == 1.0
    rep = make_report(HAND_SCORES, HAND_LABELS, (1, 1), dead_ratio=[0.25, None])
    assert rep.sip_grid == [[0.5, 1.0], [None, 1.0]]
    assert rep.goodness_pos == pytest.approx([2.5, 3.0]) and rep.goodness_neg == pytest.approx([1.75, 0.75])
    assert rep.dead_ratio == [0.25, None]
    json.dumps(rep.to_dict(), allow_nan=False)  # metrics.json stays strict JSON (None, not NaN)


def test_sip_grid_equals_range_accuracy_everywhere():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 300, 5, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    grid = range_accuracy_grid(scores, labels)
    for s in range(6):
        for e in range(6):
            if e < s:
                assert math.isnan(grid[s, e].item())
            else:  # exactly equal: the same cumulative float64 sums
                assert grid[s, e].item() == range_accuracy(scores, labels, s, e)


def test_eval_report_is_backward_compatible():
    rep = EvalReport(per_layer=[0.5], all_layers=0.5, last3=0.5, sip=None, sip_range=None, num_samples=2)
    assert rep.goodness_pos is None and rep.dead_ratio is None and rep.sip_grid is None


def test_dead_unit_ratio_of_a_tensor_with_a_dead_channel():
    a = torch.rand(5, 3, 2, 2) + 0.1
    a[:, 1] = 0.0  # channel 1: 4 dead units
    a[2:, 0, 0, 0] = 0.0  # still active for samples 0 and 1
    assert dead_unit_ratio(a) == pytest.approx(4 / 12)


def _one_by_one_cwconv(weights: list[float]) -> CWConv:
    layer = CWConv(1, len(weights), 2, kernel_size=1)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor(weights).view(-1, 1, 1, 1))
    return layer


def test_dead_ratio_of_a_layer_with_known_dead_channels():
    # 1x1 conv on positive inputs: channel 0 (w=1) and 3 (w=2) are always active, channel 1 (w=0) is exactly 0 and
    # channel 2 (w=-1) always negative: 2 of 4 channels (at every position) are dead.
    first = _one_by_one_cwconv([1.0, 0.0, -1.0, 2.0])
    second = CWConv(4, 4, 2, kernel_size=3, shortcut_channels=4)  # its ReLU input is conv(x); the shortcut comes after
    net = ffkit.FFNetwork([first, second], ffkit.ClassScoreObjective(), num_classes=2, in_channels=1,
                          shortcuts={1: 0})
    x = torch.rand(16, 1, 5, 5) + 0.1
    y = torch.randint(0, 2, (16,))
    collected = collect_scores(net, [(x[:8], y[:8]), (x[8:], y[8:])], track_activity=True)
    assert collected.dead_ratio is not None
    assert collected.dead_ratio[0] == 0.5
    with torch.no_grad():  # the second layer by hand
        f0 = first(x).features
        z = second.conv(f0)
    assert collected.dead_ratio[1] == pytest.approx(dead_unit_ratio(torch.relu(z)))
    assert not first.conv._forward_hooks and not second.conv._forward_hooks
    assert collect_scores(net, [(x, y)]).dead_ratio is None  # only measured when asked


class _Plain(FFLayer):
    """A layer without conv/linear submodules: the monitor falls back to its features."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, shortcut=None):
        h = torch.relu(x * self.scale)
        return LayerOutput(features=h, scores=h.flatten(2).mean(dim=2)[:, :2])


def test_dead_ratio_falls_back_to_features():
    net = ffkit.FFNetwork([_Plain()], ffkit.ClassScoreObjective(), num_classes=2, in_channels=3)
    x = torch.rand(4, 3, 2, 2) + 0.1
    x[:, 2] = -1.0  # channel 2 is negative everywhere: 4 of 12 units dead
    with ActivityMonitor(net) as monitor:
        net.layer_scores(x)
    assert monitor.dead_ratios() == [pytest.approx(1 / 3)]


def test_trainer_evaluate_of_a_label_overlay_network():
    """Hinton-style overlay network: goodness of positive/negative data from the same pass as the accuracies."""
    net = ffkit.create_model("hinton_mlp", num_classes=10, in_channels=1, hidden=(32, 32))
    x, y = torch.rand(40, 1, 32, 32), torch.randint(0, 10, (40,))
    rep = ffkit.LocalTrainer(net, total_steps=1).evaluate([(x, y)], (1, 1))
    scores = net.layer_scores(x).detach()
    pos = scores.gather(2, y.view(1, -1, 1).expand(2, -1, 1)).squeeze(2).double()
    neg = (scores.double().sum(dim=2) - pos) / 9
    assert rep.goodness_pos == pytest.approx(pos.mean(dim=1).tolist())
    assert rep.goodness_neg == pytest.approx(neg.mean(dim=1).tolist())
    assert len(rep.dead_ratio) == 2 and all(0.0 <= r <= 1.0 for r in rep.dead_ratio)
    assert rep.sip == rep.sip_grid[1][1] and rep.all_layers == rep.sip_grid[0][1]


def _history(n_layers: int = 3, epochs: int = 2, dead: list | None | str = "auto") -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        acc = [0.5 + 0.1 * e * (i + 1) / n_layers for i in range(n_layers)]
        grid = [[0.6 + 0.01 * (j - i) if j >= i else None for j in range(n_layers)] for i in range(n_layers)]
        out.append({"epoch": e, "train_acc": acc, "test": {
            "per_layer": acc, "all_layers": max(acc), "last3": max(acc), "sip": max(acc) - 0.01,
            "sip_range": [0, n_layers - 1], "num_samples": 10, "head": None,
            "goodness_pos": [1.0 + i for i in range(n_layers)], "goodness_neg": [0.5] * n_layers,
            "dead_ratio": [0.1 * i for i in range(n_layers)] if dead == "auto" else dead, "sip_grid": grid}})
    return out


def test_plot_functions_draw_on_given_and_new_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        hist = _history()
        fig, axes = plt.subplots(2, 2)
        assert plotting.plot_layer_accuracy(hist, ax=axes[0, 0]) is axes[0, 0]
        assert len(axes[0, 0].get_lines()) == 3 + 2  # one per layer, all layers, SIP
        plotting.plot_goodness(hist, ax=axes[0, 1], epoch=0)
        assert "epoch 1" in axes[0, 1].get_title()
        plotting.plot_dead_neurons(hist, ax=axes[1, 0])
        plotting.plot_sip_grid(hist, ax=axes[1, 1])
        # many layers (colour bar instead of a legend per layer), unmeasured dead ratios, new figures
        many = _history(n_layers=15, epochs=1, dead=None)
        for fn in (plotting.plot_layer_accuracy, plotting.plot_goodness, plotting.plot_dead_neurons,
                   plotting.plot_sip_grid):
            assert fn(many) is not None
        with pytest.raises(ValueError, match="out of range"):
            plotting.plot_goodness(hist, epoch=5)
    finally:
        plt.close("all")


def test_plots_need_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    # the hint must work from a checkout (ffkit is not on a package index)
    hint = r'pip install matplotlib \(in an ffkit checkout: pip install -e "\.\[plot\]"\)'
    with pytest.raises(ImportError, match=hint):
        plotting.plot_goodness(_history())


def test_import_ffkit_does_not_import_matplotlib():
    code = "import sys, ffkit, ffkit.plotting, ffkit.cli; assert 'matplotlib' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_missing_or_old_metrics_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="metrics.json not found"):
        plotting.plot_run(tmp_path)
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "metrics.json" in err and "ffkit train" in err and "Traceback" not in err

    old = _history()
    for rec in old:
        for key in ("goodness_pos", "goodness_neg", "dead_ratio", "sip_grid"):
            del rec["test"][key]
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"metrics.json: the test record of epoch 1 lacks goodness_pos.*re-run"):
        plotting.plot_run(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps([{"epoch": 1, "train_acc": [0.5]}]))
    with pytest.raises(ValueError, match="no test evaluation"):
        plotting.plot_run(tmp_path)
    with pytest.raises(ValueError, match="formats"):
        plotting.plot_run(tmp_path, formats=("jpg",))


def test_plot_run_writes_every_format(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_history()))
    paths = plotting.plot_run(tmp_path, out_dir=tmp_path / "figs", formats=("png", "svg", "pdf"))
    assert [p.name for p in paths[:3]] == ["layer_accuracy.png", "layer_accuracy.svg", "layer_accuracy.pdf"]
    assert len(paths) == 12 and all(p.stat().st_size > 0 for p in paths)


def test_plots_read_the_metrics_files_trainers_write(tmp_path):
    """``metrics.json`` as ``Trainer.fit`` writes it (numbers rounded, 1-based ``sip_layers`` beside the 0-based
    ``sip_range``) draws the same plots as the history itself, with the layers the console names."""
    from matplotlib.figure import Figure

    from ffkit.train.base import write_metrics

    history = _history(n_layers=4)
    for rec in history:
        rec["train_loss"] = [0.40459999442100525] * 4
        rec["test"]["sip_range"] = [2, 3]
    write_metrics(history, tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written[-1]["test"]["sip_layers"] == [3, 4] and written[-1]["train_loss"][0] == 0.4046
    for hist in (history, written):
        ax = plotting.plot_layer_accuracy(hist, ax=Figure().add_subplot())
        assert "SIP range (last: layers 3..4)" in ax.get_legend_handles_labels()[1]
        ax = plotting.plot_sip_grid(hist, ax=Figure().add_subplot())
        assert "SIP's choice (held-out): layers 3..4" in ax.get_legend_handles_labels()[1]
    assert len(plotting.plot_run(tmp_path, formats=("svg",))) == 4


def _step_records(n_layers: int = 3, per_epoch: int = 4, epochs: int = 1, goodness: bool = True) -> list[dict]:
    """metrics.jsonl's records of a synthetic run: ``per_epoch`` step records per epoch, then its epoch record."""
    out: list[dict] = []
    for e in range(1, epochs + 1):
        for k in range(1, per_epoch + 1):
            t = (e - 1) + k / per_epoch
            rec = {"kind": "step", "step": round(t * 10), "epoch": t, "batches": 2,
                   "train_loss": [2.0 - 0.3 * t * (i + 1) / n_layers for i in range(n_layers)],
                   "train_acc": [0.2 + 0.3 * t * (i + 1) / n_layers for i in range(n_layers)],
                   "train_images": 256, "train_images_per_s": 1000.0 + k, "lr": 0.01 / (1 + t), "time": "t"}
            if goodness:
                rec["train_goodness_pos"] = [1.0 + t * i for i in range(n_layers)]
                rec["train_goodness_neg"] = [1.0 - 0.1 * t * i for i in range(n_layers)]
            out.append(rec)
        out.append({"kind": "epoch", "step": 10 * e, **_history(n_layers, epochs=e)[-1]})
    return out


def _integer_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    return ticks


def test_one_epoch_run_draws_step_curves_with_integer_epoch_ticks(tmp_path):
    """A one-epoch run directory (metrics.json and metrics.jsonl) gets the four epoch plots and the four curves; the
    curves run from 0 to 1 epoch with integer ticks only, one line per layer through every step record, and the
    one-epoch layer accuracy is drawn as bars by layer."""
    from matplotlib.figure import Figure

    records = _step_records(n_layers=3)
    (tmp_path / "metrics.json").write_text(json.dumps(_history(epochs=1)))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    paths = plotting.plot_run(tmp_path)
    assert [p.name for p in paths] == [f"{n}.png" for n in (*plotting.PLOT_FILES, *plotting.CURVE_FILES)]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)

    ax = plotting.plot_train_curves(records, ax=Figure().add_subplot())
    assert _integer_ticks(ax) == [0.0, 1.0]
    lines = ax.get_lines()
    assert len(lines) == 3
    assert [float(x) for x in lines[0].get_xdata()] == [0.25, 0.5, 0.75, 1.0]
    assert [float(v) for v in lines[2].get_ydata()] == pytest.approx([r["train_loss"][2] for r in records[:4]])
    ax = plotting.plot_train_curves(records, ax=Figure().add_subplot(), metric="accuracy")
    _integer_ticks(ax)
    markers = [ln for ln in ax.get_lines() if ln.get_marker() == "D"]  # each layer's test accuracy at epoch 1
    assert [float(m.get_xdata()[0]) for m in markers] == [1.0] * 3
    test_acc = [100 * v for v in records[-1]["test"]["per_layer"]]
    assert [float(m.get_ydata()[0]) for m in markers] == pytest.approx(test_acc)
    assert "test accuracy (epoch end)" in [t.get_text() for t in ax.get_legend().get_texts()]
    ax = plotting.plot_goodness_curves(records, ax=Figure().add_subplot())
    _integer_ticks(ax)
    assert [ln.get_linestyle() for ln in ax.get_lines()] == ["-", "--"] * 3  # positive, negative per layer
    ax = plotting.plot_lr_throughput(records, ax=Figure().add_subplot())
    _integer_ticks(ax)

    ax = plotting.plot_layer_accuracy(_history(epochs=1), ax=Figure().add_subplot())
    assert len(ax.patches) == 3 and ax.get_xlabel() == "layer" and "epoch 1" in ax.get_title()
    with pytest.raises(ValueError, match="metric"):
        plotting.plot_train_curves(records, metric="lr")


def test_curves_of_longer_runs_and_runs_without_goodness_or_metrics_json(tmp_path):
    from matplotlib.figure import Figure

    records = _step_records(n_layers=15, per_epoch=30, epochs=3, goodness=False)
    ax = plotting.plot_train_curves(records, ax=Figure().add_subplot())
    assert _integer_ticks(ax)[-1] == 3.0 and len(ax.get_lines()) == 15
    ax = plotting.plot_goodness_curves(records, ax=Figure().add_subplot())
    assert "not recorded" in ax.texts[0].get_text()
    # a run still in its first epoch: step records, no metrics.json yet -> the curves only
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:5]))
    assert [p.stem for p in plotting.plot_run(tmp_path)] == list(plotting.CURVE_FILES)
    # records in memory (trainer.step_history, no "kind") plot alike
    bare = [{k: v for k, v in r.items() if k != "kind"} for r in records[:5]]
    assert len(plotting.plot_train_curves(bare, ax=Figure().add_subplot()).get_lines()) == 15
    with pytest.raises(ValueError, match="no step records"):
        plotting.plot_train_curves([r for r in records if r["kind"] == "epoch"])


@needs_fmnist
def test_ffkit_plot_after_a_short_real_run(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--out", str(run),
            "--width-multiplier", "0.2", "--limit", "512", "--eval-limit", "256", "--no-progress", "--lr", "0.01",
            "--epochs", "2", "--log-interval", "2"]
    assert main(args) == 0
    test = json.loads((run / "metrics.json").read_text())[-1]["test"]
    n = len(test["per_layer"])
    assert len(test["goodness_pos"]) == n and len(test["dead_ratio"]) == n and len(test["sip_grid"]) == n
    s, e = test["sip_range"]
    assert test["sip"] == test["sip_grid"][s][e]
    assert test["sip_layers"] == [s + 1, e + 1]  # as the console prints the range
    capsys.readouterr()

    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["layer_accuracy.png", "goodness.png", "dead_neurons.png", "sip_grid.png", "train_loss.png",
             "train_accuracy.png", "train_goodness.png", "lr_throughput.png"]
    assert printed == [str(run / name) for name in names]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 512 images in batches of 128: 4 batches per epoch, a step record after batches 2 and 4
    assert [(r["kind"], r["epoch"]) for r in records] == [("step", 0.5), ("step", 1.0), ("epoch", 1),
                                                          ("step", 1.5), ("step", 2.0), ("epoch", 2)]
    for name in names:
        data = (run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000

    assert main(["plot", str(run), "--out", str(tmp_path / "figs"), "--format", "svg", "pdf"]) == 0
    assert len(capsys.readouterr().out.split()) == 16 and (tmp_path / "figs" / "sip_grid.pdf").stat().st_size > 0
