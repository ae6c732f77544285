"""Step records (``Trainer.fit(log_every=N)``): interval means, metrics.jsonl, resume, TensorBoard and the curves."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit.evaluation import mean_goodness
from ffkit.layers import CWConv, FFLinear
from ffkit.train.base import StepResult, Trainer, metrics_record
from ffkit.train.runlog import check_tensorboard, read_records, truncate_records

VOLATILE = ("time", "train_images_per_s", "train_seconds")  # wall-clock fields: differ between identical runs


def small_cw_net() -> ffkit.FFNetwork:
    layers = [CWConv(1, 8, 4, kernel_size=3), CWConv(8, 8, 4, pool=2)]
    return ffkit.FFNetwork(layers, ffkit.ClassScoreObjective(), num_classes=4, in_channels=1, input_norm=True)


class ScriptedTrainer(Trainer):
    """A trainer whose steps return given results (two layers), to check the records against hand-computed means."""

    def __init__(self, script: list[StepResult]) -> None:
        net = small_cw_net()
        super().__init__(net, device="cpu", optimizers=[torch.optim.SGD(net.parameters(), lr=0.25)])
        self.script = script
        self.seen_lines: list[int] = []  # metrics.jsonl's lines when each step begins (set by a test)
        self.jsonl = None

    def train_step(self, x, y, index=None):
        if self.jsonl is not None:
            self.seen_lines.append(len(self.jsonl.read_text().splitlines()) if self.jsonl.exists() else 0)
        res = self.script[self.step_count % len(self.script)]
        self.step_count += 1
        return res


def _result(losses, correct, b, pos, neg) -> StepResult:
    t = torch.tensor
    return StepResult(t(losses), t(correct), b, goodness_pos=t(pos), goodness_neg=t(neg))


# One epoch of 3 batches (10 samples, batch size 4: 4 + 4 + 2), two layers.
SCRIPT = [
    _result([1.0, 2.0], [1, 2], 4, [0.5, 1.0], [0.25, 0.5]),
    _result([3.0, 4.0], [3, 4], 4, [1.5, 2.0], [0.75, 1.0]),
    _result([5.0, 6.0], [2, 0], 2, [2.5, 3.0], [1.25, 1.5]),
]


def _loader(n=10, batch_size=4, shuffle=False):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 4
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator() if shuffle else None)


def test_interval_means_match_hand_computed_values(tmp_path):
    """log_every=2 over 3 batches: the first record averages batches 1-2 (weighted by batch size), the epoch's last
    record holds the shorter interval of batch 3 alone; the epoch record averages all three."""
    trainer = ScriptedTrainer(SCRIPT)
    history = trainer.fit(_loader(), epochs=2, out_dir=tmp_path, log=None, log_every=2)
    first, last, second_epoch = trainer.step_history[0], trainer.step_history[1], trainer.step_history[2]
    # batches 1-2: loss (4*1 + 4*3)/8 = 2, (4*2 + 4*4)/8 = 3; accuracy (1+3)/8, (2+4)/8; goodness weighted alike
    assert first["train_loss"] == [2.0, 3.0] and first["train_acc"] == [0.5, 0.75]
    assert first["train_goodness_pos"] == [1.0, 1.5] and first["train_goodness_neg"] == [0.5, 0.75]
    assert (first["step"], first["batches"], first["train_images"]) == (2, 2, 8)
    assert first["epoch"] == pytest.approx(2 / 3) and first["lr"] == 0.25
    # batch 3 alone (2 samples): the partial last interval, recorded at the epoch's end
    assert last["train_loss"] == [5.0, 6.0] and last["train_acc"] == [1.0, 0.0]
    assert last["train_goodness_pos"] == [2.5, 3.0] and last["train_goodness_neg"] == [1.25, 1.5]
    assert (last["step"], last["batches"], last["train_images"], last["epoch"]) == (3, 1, 2, 1.0)
    # intervals restart with each epoch: epoch 2's first record is after its batch 2, at epoch 1 + 2/3
    assert second_epoch["step"] == 5 and second_epoch["epoch"] == pytest.approx(5 / 3)
    assert len(trainer.step_history) == 4
    # the epoch record: (4*1 + 4*3 + 2*5)/10 = 2.6, (4*2 + 4*4 + 2*6)/10 = 3.6; (1+3+2)/10, (2+4+0)/10
    epoch = history[0]
    assert epoch["train_loss"] == pytest.approx([2.6, 3.6]) and epoch["train_acc"] == pytest.approx([0.6, 0.6])
    assert epoch["train_goodness_pos"] == pytest.approx([1.3, 1.8])
    assert epoch["train_goodness_neg"] == pytest.approx([0.65, 0.9])


def test_log_every_larger_than_the_epoch_gives_one_record_per_epoch():
    trainer = ScriptedTrainer(SCRIPT)
    trainer.fit(_loader(), epochs=1, log=None, log_every=50)
    (only,) = trainer.step_history
    assert only["batches"] == 3 and only["epoch"] == 1.0 and only["train_loss"] == pytest.approx([2.6, 3.6])


def test_log_every_none_makes_no_records_and_bad_values_name_the_argument(tmp_path):
    trainer = ScriptedTrainer(SCRIPT)
    trainer.fit(_loader(), epochs=1, log=None, log_every=None, out_dir=tmp_path)
    assert trainer.step_history == []
    assert [r["kind"] for r in read_records(tmp_path / "metrics.jsonl")] == ["epoch"]
    with pytest.raises(ValueError, match="log_every must be an int >= 1"):
        ScriptedTrainer(SCRIPT).fit(_loader(), epochs=1, log=None, log_every=0)
    with pytest.raises(TypeError, match="log_every must be an int"):
        ScriptedTrainer(SCRIPT).fit(_loader(), epochs=1, log=None, log_every=2.5)  # type: ignore[arg-type]


def test_metrics_jsonl_lines_rounding_and_flushing(tmp_path):
    script = [_result([0.40459999442100525, 1 / 3], [1, 2], 4, [0.1, 0.2], [0.3, 0.4])]
    trainer = ScriptedTrainer(script)
    trainer.jsonl = tmp_path / "metrics.jsonl"
    history = trainer.fit(_loader(), epochs=1, out_dir=tmp_path, log=None, log_every=1)
    # each record is on disk before the next step starts (tail -f follows a run)
    assert trainer.seen_lines == [0, 1, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["kind"] for r in records] == ["step", "step", "step", "epoch"]
    step = records[0]
    assert list(step)[:4] == ["kind", "step", "epoch", "batches"]
    assert step["train_loss"] == [0.4046, 0.3333333]  # 7 significant digits, as metrics.json
    assert step["epoch"] == 0.3333333 and step["train_acc"] == [0.25, 0.5]
    assert records[-1] == {"kind": "epoch", "step": 3, **metrics_record(history[0])}
    assert records[-1] == {"kind": "epoch", "step": 3, **json.loads((tmp_path / "metrics.json").read_text())[0]}


def test_truncate_records_keeps_what_came_before_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "step", "step": 2}, {"kind": "step", "step": 3}, {"kind": "epoch", "epoch": 1, "step": 3},
            {"kind": "step", "step": 5}, {"kind": "step", "step": 6}, {"kind": "epoch", "epoch": 2, "step": 6}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "step", "st')  # a line cut short
    truncate_records(path, step=5, epoch=1)
    assert read_records(path) == rows[:4]
    truncate_records(path, step=0, epoch=0)  # a new run in the same directory starts an empty file
    assert path.read_text() == ""
    truncate_records(tmp_path / "none.jsonl", step=3, epoch=1)
    assert not (tmp_path / "none.jsonl").exists()


def test_local_trainer_goodness_is_the_step_forward_goodness():
    """A LocalTrainer step's goodness is each layer's mean true-class score and mean other-class score of the step's
    own forward pass (the weights before the step), as evaluation's mean_goodness defines them."""
    torch.manual_seed(0)
    net = small_cw_net()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        pos, neg = mean_goodness(net.layer_scores(x), y)
    res = ffkit.LocalTrainer(net, lr=0.01, schedule="constant", device="cpu").train_step(x, y)
    assert res.goodness_pos.shape == res.goodness_neg.shape == (2,)
    torch.testing.assert_close(res.goodness_pos, torch.tensor(pos, dtype=torch.float32))
    torch.testing.assert_close(res.goodness_neg, torch.tensor(neg, dtype=torch.float32))


def test_posneg_goodness_is_that_of_the_trained_positive_and_negative_samples():
    torch.manual_seed(0)
    enc, negs = ffkit.LabelOverlay(4), ffkit.FixedNegative(4)
    net = ffkit.FFNetwork([FFLinear(64, 16), FFLinear(16, 16)], ffkit.PosNegObjective(enc, negs), num_classes=4,
                          in_channels=1)
    x, y, index = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6)
    with torch.no_grad():
        pos_in, neg_in = enc(x, y), enc(x, negs(y, index=index))
        g_pos = torch.stack([o.goodness.mean() for _, o in net.iter_layers(pos_in)])
        g_neg = torch.stack([o.goodness.mean() for _, o in net.iter_layers(neg_in)])
    res = ffkit.LocalTrainer(net, lr=0.01, schedule="constant", device="cpu").train_step(x, y, index)
    torch.testing.assert_close(res.goodness_pos, g_pos)
    torch.testing.assert_close(res.goodness_neg, g_neg)


def test_backprop_records_have_no_goodness():
    torch.manual_seed(0)
    net = small_cw_net()
    trainer = ffkit.BackpropTrainer(net, lr=0.01, schedule="constant", device="cpu")
    trainer.fit(_loader(), epochs=1, log=None, log_every=2)
    assert [r["batches"] for r in trainer.step_history] == [2, 1]
    assert all("train_goodness_pos" not in r and len(r["train_loss"]) == len(net) for r in trainer.step_history)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def _local(seed=0):
    torch.manual_seed(seed)
    return ffkit.LocalTrainer(small_cw_net(), lr=0.01, total_steps=10, device="cpu")


def _dies_after(trainer, steps: int):
    """``trainer``, whose step after its ``steps``-th raises ``RuntimeError("killed")`` (a process killed there)."""
    real = trainer.train_step

    def train_step(x, y, index=None):
        if trainer.step_count == steps:
            raise RuntimeError("killed")
        return real(x, y, index)

    trainer.train_step = train_step
    return trainer


def test_resumed_runs_write_the_records_of_an_uninterrupted_run(tmp_path):
    """2 epochs straight, 1 + resume 1, and a run that dies inside epoch 2 after the records of batches past its
    last mid-epoch checkpoint were written: after resuming, every metrics.jsonl holds the same records (wall-clock
    fields aside), the in-flight interval's sums included."""
    kw = {"log": None, "log_every": 2, "seed": 3}
    straight = tmp_path / "straight"
    _local().fit(_loader(shuffle=True), epochs=2, out_dir=straight, **kw)
    expected = _strip(read_records(straight / "metrics.jsonl"))
    assert [r["kind"] for r in expected] == ["step", "step", "epoch"] * 2

    split = tmp_path / "split"
    _local().fit(_loader(shuffle=True), epochs=1, out_dir=split, **kw)
    resumed = _local(seed=9)
    resumed.resume(split / "checkpoint.pt")
    resumed.fit(_loader(shuffle=True), epochs=2, out_dir=split, **kw)
    assert _strip(read_records(split / "metrics.jsonl")) == expected

    # 5 batches per epoch (batch size 2), a checkpoint every 3 batches: epoch 2's checkpoint after its batch 3 holds
    # the interval of batch 3 (batches 1-2 were recorded); the run dies in batch 5, after batch 4's record
    kw5 = {**kw, "checkpoint_every": 3}
    loader = _loader(batch_size=2, shuffle=True)
    straight5, killed = tmp_path / "straight5", tmp_path / "killed"
    _local().fit(loader, epochs=2, out_dir=straight5, **kw5)
    expected5 = _strip(read_records(straight5 / "metrics.jsonl"))
    dying = _dies_after(_local(), 9)
    with pytest.raises(RuntimeError, match="killed"):
        dying.fit(loader, epochs=2, out_dir=killed, **kw5)
    written = read_records(killed / "metrics.jsonl")
    assert written[-1]["kind"] == "step" and written[-1]["step"] == 9  # past the checkpoint (step 8)
    again = _local(seed=9)
    again.resume(killed / "checkpoint.pt")
    again.fit(loader, epochs=2, out_dir=killed, **kw5)
    assert _strip(read_records(killed / "metrics.jsonl")) == expected5
    assert [r["batches"] for r in expected5 if r["kind"] == "step"] == [2, 2, 1, 2, 2, 1]


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _local()
    trainer.fit(_loader(), epochs=2, test=_loader(), out_dir=tmp_path, log=None, log_every=2, tensorboard=True)
    (events,) = (tmp_path / "tensorboard").iterdir()
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for n in (1, 2):
        for tag in ("loss", "acc", "goodness_pos", "goodness_neg"):
            assert f"train/{tag}/layer_{n}" in tags
        for tag in ("train_loss", "train_acc", "test_acc"):
            assert f"epoch/{tag}/layer_{n}" in tags
    assert {"train/lr", "train/images_per_s", "train/epoch", "epoch/test_accuracy", "epoch/lr"} <= tags
    assert "train/loss/layer_3" not in tags
    loss = acc.Scalars("train/loss/layer_2")
    assert [e.step for e in loss] == [r["step"] for r in trainer.step_history] == [2, 3, 5, 6]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"][1] for r in trainer.step_history])
    test_acc = acc.Scalars("epoch/test_accuracy")
    assert [e.step for e in test_acc] == [3, 6]
    assert [e.value for e in test_acc] == pytest.approx([h["test"]["prediction"] for h in trainer.history])


def test_tensorboard_needs_a_run_directory_and_the_package(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="out_dir"):
        _local().fit(_loader(), epochs=1, log=None, tensorboard=True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import torch.utils.tensorboard` raises
    with pytest.raises(ImportError, match=r'pip install tensorboard.*pip install -e "\.\[tensorboard\]"'):
        check_tensorboard()
    with pytest.raises(ImportError, match="tensorboard"):
        _local().fit(_loader(), epochs=1, log=None, out_dir=tmp_path, tensorboard=True)
    assert not (tmp_path / "checkpoint.pt").exists()  # refused before training


def test_log_interval_flag_and_config_values(tmp_path, capsys):
    from ffkit.cli import build_parser, load_train_config

    parser = build_parser()
    args = parser.parse_args(["train", "--log-interval", "0", "--tensorboard"])
    assert args.log_interval == 0 and args.tensorboard
    assert parser.parse_args(["train"]).log_interval is None  # fit's default (50 batches)
    for bad in ("-1", "2.5", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "--log-interval", bad])
        assert "--log-interval: expected a non-negative int" in capsys.readouterr().err
    cfg = tmp_path / "run.toml"
    cfg.write_text("log-interval = 10\ntensorboard = true\n")
    assert load_train_config(cfg) == {"log_interval": 10, "tensorboard": True}
    cfg.write_text("log-interval = -3\n")
    with pytest.raises(ValueError, match="log-interval"):
        load_train_config(cfg)


def test_a_checkpoint_after_an_epochs_last_batch_resumes_without_a_repeated_record(tmp_path):
    """5 batches per epoch, a checkpoint every 5: the checkpoint of batch 5 is written after the epoch's last step
    record (which covers batch 5); a run that dies in the evaluation after it resumes at the epoch's end and must not
    record batch 5 again."""
    kw = {"log": None, "log_every": 2, "seed": 3, "checkpoint_every": 5, "test": _loader()}
    loader = _loader(batch_size=2, shuffle=True)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _local().fit(loader, epochs=2, out_dir=straight, **kw)
    dying = _local()

    def evaluate(*args, **kwargs):
        raise RuntimeError("killed")

    dying.evaluate = evaluate  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        dying.fit(loader, epochs=2, out_dir=killed, **kw)
    assert [r["step"] for r in read_records(killed / "metrics.jsonl")] == [2, 4, 5]
    again = _local(seed=9)
    again.resume(killed / "checkpoint.pt")
    again.fit(loader, epochs=2, out_dir=killed, **kw)
    assert _strip(read_records(killed / "metrics.jsonl")) == _strip(read_records(straight / "metrics.jsonl"))


def test_skipped_batches_count_in_a_record_but_not_in_its_means():
    skipped = SCRIPT[1]._replace(skipped=True)  # on_divergence="skip" dropped batch 2's update
    trainer = ScriptedTrainer([SCRIPT[0], skipped, SCRIPT[2]])
    trainer.on_divergence = "skip"  # type: ignore[attr-defined]
    trainer.fit(_loader(), epochs=1, log=None, log_every=2)
    first, last = trainer.step_history
    assert (first["batches"], first["skipped_batches"], first["train_images"]) == (2, 1, 4)
    assert first["train_loss"] == [1.0, 2.0] and first["train_goodness_pos"] == [0.5, 1.0]  # batch 1 alone
    assert last["skipped_batches"] == 0 and last["train_loss"] == [5.0, 6.0]


def test_a_resumed_run_hides_the_tensorboard_scalars_logged_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kw = {"log": None, "log_every": 1, "seed": 3, "checkpoint_every": 3, "tensorboard": True}
    loader = _loader(batch_size=2, shuffle=True)  # 5 batches per epoch
    dying = _dies_after(_local(), 4)
    with pytest.raises(RuntimeError, match="killed"):
        dying.fit(loader, epochs=1, out_dir=tmp_path, **kw)  # logged steps 1-4; the checkpoint is after step 3
    again = _local(seed=9)
    again.resume(tmp_path / "checkpoint.pt")
    again.fit(loader, epochs=1, out_dir=tmp_path, **kw)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss/layer_1")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]  # step 4 once: the resumed run's
    assert loss[3].value == pytest.approx(again.step_history[0]["train_loss"][0])
