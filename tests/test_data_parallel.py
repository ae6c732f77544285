"""DataParallelTrainer: with two ranks on half of every batch, the weights of LocalTrainer on the whole batches; an
exact resume; a non-finite step or a lost rank stops every rank with a clear error; ``ffkit train --data-parallel``
under torchrun (gloo on 127.0.0.1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import ffkit
from ffkit.cli import main
from ffkit.models import create_model
from helpers.distributed import torchrun

WORKER = Path(__file__).parent / "helpers" / "data_parallel_worker.py"
MODELS = ("deeperforward_tinycnn", "deeperforward_resnet17", "hinton_mlp")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One two-process launch of every scenario of the worker (a launch is most of a test's time)."""
    out = tmp_path_factory.mktemp("data_parallel")
    proc, _ = torchrun(str(WORKER), str(out), "all", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lambda name, rank: torch.load(out / f"{name}.rank{rank}.pt")


def _model(name):
    torch.manual_seed(0)
    if name == "hinton_mlp":
        return create_model(name, width_multiplier=0.1, negatives="fixed")
    return create_model(name, width_multiplier=0.1, in_channels=3, dropout=0.0)


@pytest.mark.parametrize("name", MODELS)
def test_two_ranks_on_half_batches_equal_local_trainer_on_the_whole_batches(job, name):
    """Five Adam steps in float64 (ResNet17: shortcuts; Hinton's MLP: positive and negative passes with FixedNEG
    labels, the same for a sample on any rank): the same weights within 1e-10, on both ranks."""
    net = _model(name).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, net.in_channels, 32, 32, generator=g).double()
    y = torch.randint(0, 10, (80,), generator=g)
    ref = ffkit.LocalTrainer(net, lr=0.01, schedule="constant")
    for b in range(5):
        ref.train_step(x[b * 16 : b * 16 + 16], y[b * 16 : b * 16 + 16], torch.arange(b * 16, b * 16 + 16))
    ranks = [job(f"equiv-{name}", r) for r in (0, 1)]
    for key, value in net.state_dict().items():
        for got in ranks:
            torch.testing.assert_close(got["weights"][key], value, rtol=0, atol=1e-10, msg=key)
    assert ranks[0]["bytes"] > 0 and ranks[0]["exposed"] >= 0


@pytest.mark.parametrize("name", ["hinton_mlp", "deeperforward_tinycnn"])
def test_resume_gives_the_uninterrupted_weights(job, name):
    """Random negative labels (Hinton's MLP) and dropout (TinyCNN) draw from each rank's own stream: a run resumed
    after its first epoch ends with exactly the weights of the uninterrupted two epochs, on every rank."""
    for r in (0, 1):
        result = job(f"resume-{name}", r)
        for key, value in result["whole"].items():
            assert torch.equal(result["resumed"][key], value), (r, key)


def test_a_nonfinite_step_on_one_rank_stops_every_rank_before_any_update(job):
    mine, other = job("nan", 1), job("nan", 0)
    assert mine["unchanged"] and other["unchanged"]
    assert re.match(r"layer 1 of 4 \(index 0, CWConv\) produced a non-finite goodness at epoch 1, step 1",
                    mine["error"])
    assert ("non-finite gradient (with a finite loss) (averaged over the data-parallel ranks: it can come from "
            "another rank's samples) at epoch 1, step 1") in other["error"]


def _assert_close(a, b, where: str) -> None:
    if isinstance(b, (list, tuple)):
        assert isinstance(a, (list, tuple)) and len(a) == len(b), where
        for k, (u, v) in enumerate(zip(a, b)):
            _assert_close(u, v, f"{where}[{k}]")
    elif isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in b:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6), where
    else:
        assert a == b, where


def test_evaluation_shared_by_the_ranks_equals_one_process(job):
    """Seven test batches, four scored on rank 0 and three on rank 1, then gathered: the report of one process on all
    seven (accuracies, SIP grid, goodness and dead ratios, exactly: the same sums of the same scores)."""
    for r in (0, 1):
        result = job("eval", r)
        shared, alone = result["shared"], result["alone"]
        assert shared.keys() == alone.keys()
        for key in alone:
            _assert_close(shared[key], alone[key], key)
        start, end, accuracy = result["sip"]
        assert 0 <= start <= end < 4 and 0.0 <= accuracy <= 1.0


def test_a_lost_rank_ends_the_others_with_a_clear_error(tmp_path):
    proc, seconds = torchrun(str(WORKER), str(tmp_path), "leave", timeout=120)
    result = torch.load(tmp_path / "leave.rank0.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]  # rank 0 caught it: a PipelineError, not a hang or a crash
    assert re.match(r"data-parallel rank 0 of 2 failed (waiting for|in) a gradient all-reduce \(timeout 5 s\): ",
                    result["error"])
    assert result["seconds"] < 60 and seconds < 120


@pytest.mark.parametrize(("flags", "message"), [
    (["--data-parallel"], "--data-parallel runs one replica per process: launch with torchrun --nproc-per-node N"),
    (["--data-parallel", "--pipeline"], "--data-parallel with --pipeline (data x pipeline parallelism) is not "
                                        "available yet"),
    (["--data-parallel", "--trainer", "backprop"], "--data-parallel trains with the local trainer"),
    (["--data-parallel", "--checkpoint-every", "2"], "--checkpoint-every conflicts with --data-parallel"),
])
def test_cli_data_parallel_refusals(tmp_path, capsys, flags, message):
    assert main(["train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), *flags]) == 2
    assert message in capsys.readouterr().err


class _Recorder:
    """Stands for GradientAverage and records when LocalTrainer calls it."""

    def __init__(self, events: list, trainer: ffkit.LocalTrainer) -> None:
        self.events, self.index = events, {id(o): k for k, o in enumerate(trainer.optimizers) if o is not None}

    def launch(self, opt) -> None:
        assert all(p.grad is not None for g in opt.param_groups for p in g["params"])  # final when launched
        self.events.append(f"exchange {self.index[id(opt)]}")

    def finish(self) -> None:
        self.events.append("wait")

    def agree(self, ok):
        self.events.append("agree")
        return ok


def test_each_layer_exchange_starts_before_the_next_layer_runs_and_is_waited_for_once():
    """The order that lets the exchange hide: layer l's gradients leave as soon as its backward ends, while layer
    l + 1 runs; the step waits once, before any optimizer steps."""
    net = _model("deeperforward_tinycnn")
    trainer = ffkit.LocalTrainer(net, schedule="constant")
    events: list[str] = []
    trainer.gradient_sync = _Recorder(events, trainer)
    for i, layer in enumerate(net.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: events.append(f"layer {i}"))
    for opt in trainer.optimizers:
        opt.register_step_pre_hook(lambda *_: events.append("step"))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    trainer.train_step(x, y)
    n = len(net.layers)
    expected = [e for i in range(n) for e in (f"layer {i}", f"exchange {i}")] + ["wait", "agree"] + ["step"] * n
    assert events == expected
