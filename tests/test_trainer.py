"""LocalTrainer: update order and locality, checkpoints and resuming, divergence, and both objective families."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit import goodness, losses
from ffkit.layers import CWConv, FFLinear, TrifectaConv
from ffkit.models import create_model
from ffkit.train import checkpoint as ckpt_mod


def small_cw_net(dropout: float = 0.0) -> ffkit.FFNetwork:
    layers = [
        CWConv(1, 8, 4, kernel_size=3, dropout=dropout),
        CWConv(8, 8, 4, pool=2, dropout=dropout),
        CWConv(8, 16, 4, dropout=dropout, shortcut_channels=8),
    ]
    return ffkit.FFNetwork(
        layers, ffkit.ClassScoreObjective(), num_classes=4, in_channels=1, input_norm=True, shortcuts={2: 0}
    )


def test_step_matches_hand_written_layerwise_reference():
    """Each layer runs once on the previous layer's detached pre-update features, then takes one SGD step."""
    torch.manual_seed(1)
    net = small_cw_net()
    ref = [[p.detach().clone() for p in layer.parameters()] for layer in net.layers]
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    lr = 0.1
    trainer = ffkit.LocalTrainer(net, lr=lr, optimizer="sgd", weight_decay=0.0, schedule="constant")
    for opt in trainer.optimizers:  # plain SGD to keep the reference simple
        opt.param_groups[0]["momentum"] = 0.0
    trainer.train_step(x, y)

    # Reference, written from the paper's description with functional ops only.
    h = F.layer_norm(x, x.shape[1:])
    (w0,), (w1,), (w2,) = ref
    feats = []
    expected = []
    for i, w in enumerate([w0, w1, w2]):
        w = w.clone().requires_grad_(True)
        inp = F.avg_pool2d(h, 2) if i == 1 else h
        a = F.relu(F.conv2d(inp, w, padding=1))
        scores = a.reshape(6, 4, -1).mean(2)
        loss = F.cross_entropy(scores, y)
        (g,) = torch.autograd.grad(loss, w)
        expected.append(w.detach() - lr * g)
        h = F.group_norm(a.detach(), 4)
        if i == 2:  # after the scores: 8 normalised conv channels, then layer 0's 8 channels (pooled to 4x4)
            h = torch.cat([h, F.avg_pool2d(feats[0], 2)], dim=1)
        feats.append(h)
    for layer, exp in zip(net.layers, expected):
        torch.testing.assert_close(layer.conv.weight.detach(), exp)


def _data(n=48, classes=4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % classes
    x[torch.arange(n), 0, y, y] += 2.0  # a learnable signal
    return TensorDataset(x, y)


def _loader(ds):
    return DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator())


def test_resume_reproduces_uninterrupted_run(tmp_path):
    ds = _data()
    torch.manual_seed(0)
    a = ffkit.LocalTrainer(small_cw_net(dropout=0.3), lr=0.01, total_steps=6)
    a.fit(_loader(ds), epochs=2, out_dir=tmp_path / "a", log=None)

    torch.manual_seed(0)
    b = ffkit.LocalTrainer(small_cw_net(dropout=0.3), lr=0.01, total_steps=6)
    b.fit(_loader(ds), epochs=1, out_dir=tmp_path / "b", log=None)
    torch.manual_seed(123)  # a resumed process starts with other RNG state; the checkpoint restores it
    c = ffkit.LocalTrainer(small_cw_net(dropout=0.3), lr=0.01, total_steps=6)
    c.resume(tmp_path / "b" / "checkpoint.pt")
    assert c.epoch == 1 and c.step_count == 3
    c.fit(_loader(ds), epochs=2, out_dir=tmp_path / "b", log=None)

    for pa, pc in zip(a.network.parameters(), c.network.parameters()):
        torch.testing.assert_close(pa, pc, rtol=0, atol=0)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in c.history]
    assert (tmp_path / "b" / "metrics.csv").read_text().count("\n") == 1 + 2 * 3


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = ffkit.LocalTrainer(small_cw_net(), lr=0.01, total_steps=3)
    path = trainer.save(tmp_path / "checkpoint.pt")
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    trainer = ffkit.LocalTrainer(small_cw_net(), lr=0.01, total_steps=3)
    path = trainer.save(tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        trainer.resume(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        trainer.resume(tmp_path / "missing.pt")


def test_checkpoint_from_another_model_is_rejected(tmp_path):
    tiny = create_model("deeperforward_tinycnn", num_classes=10, in_channels=1, width_multiplier=0.1)
    path = ffkit.LocalTrainer(tiny, total_steps=1).save(tmp_path / "tiny.pt")
    other = create_model("deeperforward_cnn14", num_classes=10, in_channels=1, width_multiplier=0.1)
    with pytest.raises(ValueError, match="from model 'deeperforward_tinycnn', not 'deeperforward_cnn14'"):
        ffkit.LocalTrainer(other, total_steps=1).resume(path)
    wider = create_model("deeperforward_tinycnn", num_classes=10, in_channels=1, width_multiplier=0.2)
    with pytest.raises(ValueError, match="built with"):
        ffkit.LocalTrainer(wider, total_steps=1).resume(path)


def test_divergence_names_the_layer():
    net = small_cw_net()
    trainer = ffkit.LocalTrainer(net, lr=0.01, total_steps=2)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        net.layers[1].conv.weight.fill_(float("nan"))
    with pytest.raises(ffkit.DivergenceError, match=r"layer 2 of 3 \(index 1, CWConv\).*epoch 1, step 1"):
        trainer.train_step(x, torch.tensor([0, 1, 2, 3]))


def test_bad_labels_and_inputs():
    trainer = ffkit.LocalTrainer(small_cw_net(), lr=0.01, total_steps=2)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[0, 7\]"):
        trainer.train_step(x, torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        trainer.train_step(x, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        trainer.train_step(x, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        trainer.train_step(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="4 entries but the batch has 3"):
        trainer.train_step(torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2, 3]))


def test_trainer_argument_errors():
    with pytest.raises(TypeError, match="FFNetwork"):
        ffkit.LocalTrainer(torch.nn.Linear(2, 2), total_steps=1)
    with pytest.raises(ValueError, match="total_steps"):
        ffkit.LocalTrainer(small_cw_net())
    with pytest.raises(ValueError, match="unknown optimizer"):
        ffkit.LocalTrainer(small_cw_net(), optimizer="adagrad", total_steps=1)
    with pytest.raises(ValueError, match="epochs"):
        ffkit.LocalTrainer(small_cw_net(), total_steps=1).fit(_loader(_data()), epochs=0)


def test_cosine_schedule_goes_from_lr_to_final_lr():
    trainer = ffkit.LocalTrainer(small_cw_net(), lr=0.08, total_steps=4)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    assert trainer.current_lr(0) == pytest.approx(0.08)
    for _ in range(4):
        trainer.train_step(x, y)
    assert all(trainer.current_lr(i) == pytest.approx(0.008) for i in range(3))


def test_sip_range_prunes_inference():
    net = small_cw_net()
    net.eval()
    x = torch.rand(5, 1, 8, 8)
    full = net.layer_scores(x)
    net.set_inference_range(1, 1)
    calls = []
    net.layers[2].register_forward_hook(lambda *a: calls.append(1))
    torch.testing.assert_close(net(x), full[1])
    assert calls == []  # the layer after the range never ran
    with pytest.raises(ValueError, match="inference range"):
        net.set_inference_range(2, 1)


def test_training_learns_and_fit_selects_layers(tmp_path):
    ds = _data(n=96)
    trainer = ffkit.LocalTrainer(small_cw_net(), lr=0.01, total_steps=6 * 6)
    hist = trainer.fit(_loader(ds), epochs=6, holdout=DataLoader(ds, 32), test=DataLoader(ds, 32), log=None)
    assert hist[-1]["test"]["all_layers"] > 0.9
    assert hist[-1]["train_loss"][0] < hist[0]["train_loss"][0]
    s, e = hist[-1]["test"]["sip_range"]
    assert (s, e) == tuple(int(v) for v in trainer.network.inference_range)


def _posneg_net(layers, encoder, negatives, loss="symba"):
    return ffkit.FFNetwork(
        layers, ffkit.PosNegObjective(encoder, negatives, loss=loss, threshold=1.0), num_classes=4, in_channels=1
    )


def test_label_channel_trifecta_layers_train_with_symba():
    torch.manual_seed(0)
    enc = ffkit.LabelChannel(4, 8, 8, learned=True)
    net = _posneg_net(
        [TrifectaConv(2, 8), TrifectaConv(8, 8, maxpool=True)], enc, ffkit.RandomNegative(4)
    )
    trainer = ffkit.LocalTrainer(net, lr=0.01, total_steps=1)
    before = enc.matrix.detach().clone()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    batch = net.objective.prepare(net, x, y)
    assert batch.inputs.shape == (12, 2, 8, 8)
    out = next(net.iter_layers(batch.inputs))[1]
    g = out.goodness
    expected = losses.symba(g[:6], g[6:], alpha=4.0)
    assert torch.isclose(net.objective.layer_loss(out, batch)[0], expected)
    torch.testing.assert_close(g, goodness.squared(out.features, reduction="mean"))
    trainer.train_step(x, y)
    assert not torch.equal(before, enc.matrix)  # the learned label channel trains with the first layer
    scores = net.layer_scores(x)
    assert scores.shape == (2, 6, 4)


def test_overlay_mlp_with_adaptive_negatives_and_threshold_loss():
    torch.manual_seed(0)
    net = _posneg_net(
        [FFLinear(64, 32), FFLinear(32, 32)], ffkit.LabelOverlay(4), ffkit.AdaptiveNegative(4), loss="threshold"
    )
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    trainer = ffkit.LocalTrainer(net, lr=0.01, schedule="constant")
    res = trainer.train_step(x, y)
    assert res.losses.shape == (2,)
    # one pass per label: scores[l, b, k] is layer l's goodness of x_b overlaid with label k
    scores = net.layer_scores(x)
    k = 2
    xk = ffkit.LabelOverlay(4)(x, torch.full((8,), k))
    torch.testing.assert_close(scores[1, :, k], next(o for i, o in net.iter_layers(xk) if i == 1).goodness)


def test_fit_writes_run_directory(tmp_path):
    trainer = ffkit.LocalTrainer(small_cw_net(), lr=0.01, total_steps=3)
    trainer.fit(_loader(_data()), epochs=1, test=DataLoader(_data(), 16), out_dir=tmp_path, log=None)
    written = {p.name for p in Path(tmp_path).iterdir()}
    assert written == {"checkpoint.pt", "metrics.json", "metrics.csv", "metrics.jsonl"}


def _trifecta_stack(n_layers: int = 5) -> ffkit.FFNetwork:
    layers = [TrifectaConv(2 if i == 0 else 4, 4) for i in range(n_layers)]
    return _posneg_net(layers, ffkit.LabelChannel(4, 8, 8), ffkit.RandomNegative(4))


def test_overlapping_local_updates_cross_exactly_one_boundary():
    """OLU: at even steps odd layers update (with the layer before them); at odd steps even layers do."""
    net = _trifecta_stack(5)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, schedule="constant", overlap=True)
    # each optimizer holds its own and the previous layer's parameters
    assert len(trainer.optimizers[0].param_groups[0]["params"]) == len(list(net.layers[0].parameters()))
    assert len(trainer.optimizers[3].param_groups[0]["params"]) == 2 * len(list(net.layers[3].parameters()))
    sources: dict[int, list[int]] = {i: [] for i in range(5)}
    # A layer's loss is back-propagated right after that layer's forward and before the next layer's, so the
    # layer that ran last is the one whose loss a gradient comes from.
    current = {"layer": None}
    for i, layer in enumerate(net.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: current.__setitem__("layer", i))
        layer.conv.weight.register_hook(lambda g, i=i: sources[i].append(current["layer"]))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    trainer.train_step(x, y)  # step 0: layers 1 and 3 update
    assert sources == {0: [1], 1: [1], 2: [3], 3: [3], 4: []}
    for v in sources.values():
        v.clear()
    trainer.train_step(x, y)  # step 1: layers 0, 2 and 4 update
    assert sources == {0: [0], 1: [2], 2: [2], 3: [4], 4: [4]}
    assert trainer.updates_at(0)(1) and not trainer.updates_at(1)(1)


def test_without_overlap_every_layer_updates_alone():
    net = _trifecta_stack(3)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, schedule="constant")
    assert all(trainer.updates_at(t)(k) for t in range(2) for k in range(3))


def test_head_predicts_makes_the_head_the_networks_prediction():
    """``head_predicts=True``: ``net(x)`` is the head's logits (DTG-FF's test-time prediction), and the report's
    ``prediction`` is the head's accuracy; without it, the layers' summed scores."""
    layers = [CWConv(1, 8, 4, kernel_size=3), CWConv(8, 8, 4, pool=2)]
    head = ffkit.ClassifierHead(8, 4, [1])
    net = ffkit.FFNetwork(layers, ffkit.ClassScoreObjective(), num_classes=4, in_channels=1, head=head,
                          head_predicts=True).eval()
    x = torch.rand(6, 1, 8, 8)
    torch.testing.assert_close(net(x), net.head_logits(x))
    assert not torch.allclose(net(x), net.class_scores(x))
    loader = _loader(TensorDataset(x, torch.arange(6) % 4))
    rep = ffkit.LocalTrainer(net, total_steps=1).evaluate(loader)
    assert rep.prediction == rep.head and rep.prediction_range is None
    with pytest.raises(ValueError, match="head_predicts=True needs a classifier head"):
        ffkit.FFNetwork(layers, ffkit.ClassScoreObjective(), num_classes=4, in_channels=1, head_predicts=True)


# -- resume with other optimisation settings: honoured, re-planned or refused ---------------------------------------
def _trained(tmp_path, name="run", steps=3, **options) -> Path:
    """A checkpoint of ``small_cw_net`` after ``steps`` steps of a LocalTrainer with ``options``."""
    torch.manual_seed(0)
    t = ffkit.LocalTrainer(small_cw_net(), **options)
    x, y = _data()[:16]
    for _ in range(steps):
        t.train_step(x, y)
    return t.save(tmp_path / f"{name}.pt")


def _resumed(path, **options) -> ffkit.LocalTrainer:
    t = ffkit.LocalTrainer(small_cw_net(), **options)
    t.resume(path)
    return t


def _lrs(t):
    return [o.param_groups[0]["lr"] for o in t.optimizers if o is not None]


def test_resume_with_another_lr_follows_the_plan_made_with_it(tmp_path):
    path = _trained(tmp_path, lr=0.01, final_lr=0.001, weight_decay=0.0, total_steps=8)
    t = _resumed(path, lr=0.002, final_lr=0.0002, weight_decay=0.1, total_steps=8)
    # where a run started with lr 0.002 is after 3 of 8 cosine steps: 2e-4 + 1.8e-3 (1 + cos(3 pi / 8)) / 2
    expected = 2e-4 + 1.8e-3 * (1 + math.cos(3 * math.pi / 8)) / 2
    assert _lrs(t) == pytest.approx([expected] * 3, rel=1e-12)
    assert all(o.param_groups[0]["weight_decay"] == 0.1 for o in t.optimizers)
    assert len(t.resume_notes) == 3 and "lr 0.01 -> 0.002" in t.resume_notes[0]
    x, y = _data()[:16]
    for step in range(4, 9):  # the next steps follow the same curve down to the final lr
        t.train_step(x, y)
        assert _lrs(t)[0] == pytest.approx(2e-4 + 1.8e-3 * (1 + math.cos(step * math.pi / 8)) / 2, rel=1e-12)
    same = _resumed(path, lr=0.01, final_lr=0.001, weight_decay=0.0, total_steps=8)
    assert same.resume_notes == [] and isinstance(same.schedulers[0], torch.optim.lr_scheduler.CosineAnnealingLR)


def test_resume_for_longer_continues_the_cosine_from_where_it_is(tmp_path):
    # interrupted at step 2 of 4: from the old curve's lr at step 2 down to the final lr over the 6 steps left
    path = _trained(tmp_path, steps=2, lr=0.01, final_lr=0.0, total_steps=4)
    t = _resumed(path, lr=0.01, final_lr=0.0, total_steps=8)
    top = 0.01 * (1 + math.cos(2 * math.pi / 4)) / 2
    assert _lrs(t)[0] == pytest.approx(top, rel=1e-12)
    x, y = _data()[:16]
    seen = []
    for step in range(3, 9):
        t.train_step(x, y)
        seen.append(_lrs(t)[0])
        assert seen[-1] == pytest.approx(top * (1 + math.cos((step - 2) * math.pi / 6)) / 2, abs=1e-15)
    assert seen == sorted(seen, reverse=True) and seen[-1] == pytest.approx(0.0, abs=1e-15)
    # a finished run resumed for longer stays at its final lr, and says so
    done = _trained(tmp_path, name="done", steps=4, lr=0.01, final_lr=0.001, total_steps=4)
    t = _resumed(done, lr=0.01, final_lr=0.001, total_steps=12)
    assert _lrs(t)[0] == pytest.approx(0.001, rel=1e-12) and "schedule of 4 -> 12 steps" in t.resume_notes[0]
    t.train_step(x, y)
    assert _lrs(t)[0] == pytest.approx(0.001, rel=1e-12)


def test_resume_for_longer_with_a_constant_schedule_equals_one_longer_run(tmp_path):
    ds = _data()
    torch.manual_seed(0)
    whole = ffkit.LocalTrainer(small_cw_net(dropout=0.3), lr=0.01, schedule="constant", total_steps=12)
    whole.fit(_loader(ds), epochs=4, log=None)
    torch.manual_seed(0)
    first = ffkit.LocalTrainer(small_cw_net(dropout=0.3), lr=0.01, schedule="constant", total_steps=6)
    first.fit(_loader(ds), epochs=2, out_dir=tmp_path / "short", log=None)
    longer = ffkit.LocalTrainer(small_cw_net(dropout=0.3), lr=0.01, schedule="constant", total_steps=12)
    longer.resume(tmp_path / "short" / "checkpoint.pt")
    longer.fit(_loader(ds), epochs=4, log=None)
    for a, b in zip(whole.network.parameters(), longer.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_replanned_run_resumes_again_exactly(tmp_path):
    path = _trained(tmp_path, steps=2, lr=0.01, final_lr=0.0, total_steps=4)
    x, y = _data()[:16]
    torch.manual_seed(5)
    straight = _resumed(path, lr=0.005, final_lr=0.0, total_steps=8)
    for _ in range(4):
        straight.train_step(x, y)
    torch.manual_seed(5)
    halfway = _resumed(path, lr=0.005, final_lr=0.0, total_steps=8)
    for _ in range(2):
        halfway.train_step(x, y)
    again = _resumed(halfway.save(tmp_path / "again.pt"), lr=0.005, final_lr=0.0, total_steps=8)
    assert again.resume_notes == [] and isinstance(again.schedulers[0], torch.optim.lr_scheduler.LambdaLR)
    for _ in range(2):
        again.train_step(x, y)
    assert _lrs(again) == _lrs(straight)
    for a, b in zip(straight.network.parameters(), again.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_write_text_atomic_replaces_the_file_whole_and_keeps_the_text_as_given(tmp_path, monkeypatch):
    from pathlib import Path

    from ffkit._files import write_text_atomic

    path = tmp_path / "metrics.csv"
    path.write_text("old\n")
    assert write_text_atomic(path, "a,b\r\n1,2\r\n") == path
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"  # csv's line ends, untranslated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no temporary file left

    def fail(self, target):  # the process dies before the rename: the old file must be whole
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new text")
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # nor after a failed one
