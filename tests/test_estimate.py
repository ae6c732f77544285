"""Run-time estimates (``ffkit.train.estimate``) and the next steps ``ffkit train`` suggests."""

import argparse
from pathlib import Path

import pytest
import torch

from ffkit.cli import _without_options, next_steps
from ffkit.train import estimate as estimate_module
from ffkit.train.estimate import RunEstimate, format_duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (40.4, "40 s"), (89.4, "89 s"), (90, "1.5 min"), (372, "6.2 min"), (5399, "90.0 min"),
    (5400, "1.5 h"), (52_200, "14.5 h"), (48 * 3600, "2.0 days"), (267_840, "3.1 days"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_format_duration_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="seconds must be a non-negative number"):
        format_duration(bad)


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_estimate_from_the_first_batches(monkeypatch):
    """400 batches of 128 per epoch, 3 epochs: the first batch is not timed (it took 9 s here), then 20 batches
    (5% of 400) at 0.5 s each give 256 img/s, 200 s per epoch, and (400 - 21 + 2 * 400) x 0.5 s = 589.5 s left."""
    clock = FakeClock()
    monkeypatch.setattr(estimate_module.time, "perf_counter", clock)
    lines: list[str] = []
    est = RunEstimate(lines.append, epochs=3)
    clock.now += 9.0
    est.batch_done(1, 400, 128)
    for k in range(2, 22):
        clock.now += 0.5
        est.batch_done(k, 400, 128)
        assert len(lines) == (1 if k == 21 else 0)
    assert lines == ["speed over the first 21 batches: 256 img/s, so about 3.3 min per epoch of training; the 3 "
                     "epochs need about 9.8 min more, plus each epoch's evaluation"]
    for k in range(22, 30):
        est.batch_done(k, 400, 128)
    assert len(lines) == 1  # said once


def test_estimate_is_silent_for_an_epoch_shorter_than_its_sample(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(estimate_module.time, "perf_counter", clock)
    lines: list[str] = []
    est = RunEstimate(lines.append, epochs=1)
    for k in range(1, 12):  # 10 timed batches are wanted; the last one ends the epoch
        clock.now += 1.0
        est.batch_done(k, 11, 32)
    assert lines == [] and est.done


def test_epoch_done_says_what_the_remaining_epochs_take():
    lines: list[str] = []
    est = RunEstimate(lines.append, epochs=150)
    est.epoch_done(train_seconds=300.0, eval_seconds=60.0, epochs_left=149)
    est.epoch_done(train_seconds=300.0, eval_seconds=60.0, epochs_left=1)
    est.epoch_done(train_seconds=300.0, eval_seconds=60.0, epochs_left=0)
    assert lines == [
        "  this epoch: 5.0 min of training, 60 s of evaluation; the remaining 149 epochs need about 14.9 h",
        "  this epoch: 5.0 min of training, 60 s of evaluation; the remaining 1 epoch needs about 6.0 min",
    ]


def test_fit_logs_the_estimate_and_an_evaluation_bar(capsys):
    import ffkit

    torch.manual_seed(0)
    net = ffkit.create_model("deeperforward_tinycnn", width_multiplier=0.1, in_channels=1)
    data = torch.utils.data.TensorDataset(torch.rand(24 * 8, 1, 16, 16), torch.randint(0, 10, (24 * 8,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    test = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(16)), batch_size=8)
    lines: list[str] = []
    trainer = ffkit.LocalTrainer(net, lr=0.01, total_steps=48)
    trainer.fit(loader, epochs=2, test=test, log=lines.append, progress=True)
    assert lines[0].startswith("speed over the first 11 batches: ") and "the 2 epochs need about" in lines[0]
    assert lines[2].startswith("  this epoch: ") and lines[2].endswith("needs about " + lines[2].split()[-2] + " s")
    assert len(lines) == 4 and lines[1].startswith("epoch 1/2") and lines[3].startswith("epoch 2/2")
    assert "test:" in capsys.readouterr().err  # the evaluation's progress bar (tqdm writes to stderr)
    assert trainer.estimate is None  # fit's estimate does not outlive it


@pytest.mark.parametrize(("argv", "kept"), [
    (["train", "--epochs", "3", "--out", "r"], ["train", "--out", "r"]),
    (["train", "--epochs=3", "--resume"], ["train"]),
    (["train", "--resume", "r/checkpoint.pt", "--lr", "0.1"], ["train", "--lr", "0.1"]),
    (["train", "--resume", "--lr", "0.1"], ["train", "--lr", "0.1"]),
])
def test_without_options(argv, kept):
    assert _without_options(argv, ("--epochs", "--resume")) == kept


def _args(**kw):
    base = {"command_line": ["train", "--model", "deeperforward_tinycnn", "--epochs", "1"], "limit": None,
            "eval_limit": None}
    return argparse.Namespace(**{**base, **kw})


def test_next_steps_time_the_longer_runs_and_say_which_need_a_gpu():
    text = next_steps(_args(), {"recipe": None}, model="deeperforward_tinycnn", dataset="fashion-mnist",
                      out=Path("runs/x"), epochs=1, epoch_seconds=480.0, device=torch.device("cpu"))
    lines = text.splitlines()
    assert lines[0] == "Next steps:"
    assert "  ffkit plot runs/x" in lines and "  ffkit test --checkpoint runs/x/checkpoint.pt --tta flip" in lines
    i = lines.index("  ffkit train --model deeperforward_tinycnn --epochs 5 --resume")
    assert lines[i + 1] == "      train this run on to 5 epochs: about 32.0 min more on this cpu"  # 4 x 8 min
    assert "  ffkit train --recipe fast-fmnist-cpu" in lines
    j = lines.index("  ffkit train --recipe deeperforward-tinycnn-fmnist")
    assert "150 epochs: about 20.0 h on this cpu; it needs a GPU (--device cuda)" in lines[j + 1]  # 150 x 8 min
    on_gpu = next_steps(_args(), {"recipe": None}, model="deeperforward_tinycnn", dataset="fashion-mnist",
                        out=Path("runs/x"), epochs=1, epoch_seconds=480.0, device=torch.device("cuda"))
    assert "needs a GPU" not in on_gpu


def test_next_steps_without_a_paper_recipe_and_after_the_fast_recipe():
    text = next_steps(_args(), {"recipe": "fast-fmnist-cpu"}, model="cwcomp_cnn", dataset="fashion-mnist",
                      out=Path("r"), epochs=8, epoch_seconds=60.0, device=torch.device("cpu"))
    assert "--recipe fast-fmnist-cpu" not in text  # it just ran
    assert "train this run on to 16 epochs: about 8.0 min more" in text
    mnist = next_steps(_args(), {"recipe": None}, model="deeperforward_tinycnn", dataset="svhn", out=Path("r"),
                       epochs=1, epoch_seconds=60.0, device=torch.device("cpu"))
    assert "fast-fmnist-cpu" not in mnist and "  ffkit recipes" in mnist.splitlines()
