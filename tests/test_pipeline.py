"""PipelineTrainer: the same weights as LocalTrainer for any number of batches in flight, in threads and across
processes (torch.distributed, gloo), stage checkpoints, and faults that end the job with a clear error."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ffkit.models import create_model
from ffkit.train import LocalTrainer
from ffkit.train.pipeline import PipelineError, PipelineTrainer
from helpers.distributed import torchrun

WORKER = Path(__file__).parent / "helpers" / "pipeline_worker.py"


def _model(name="deeperforward_tinycnn", **kw):
    torch.manual_seed(0)
    extra = {} if "mlp" in name else {"in_channels": 3, "dropout": 0.0}  # the MLP has no dropout
    return create_model(name, width_multiplier=0.1, **extra, **kw)


def _loader(c=3, n=48, batch=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, drop_last=True)


def _local(name, epochs=1):
    net = _model(name)
    t = LocalTrainer(net, schedule="constant")
    for _ in range(epochs):
        for xb, yb in _loader(net.in_channels):
            t.train_step(xb, yb)
    return net


def _assert_same_weights(a, b, atol=0.0):
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


@pytest.mark.parametrize(
    "name,stages",
    [("deeperforward_tinycnn", 2), ("deeperforward_tinycnn", "per-layer"), ("deeperforward_resnet17", 3),
     ("hinton_mlp", (0, 3))],
)
def test_threads_pipeline_equals_local_trainer(name, stages):
    """Every layer sees the same batches with the same weights as in LocalTrainer's loop, whatever is in flight:
    bit-identical weights (ResNet17: shortcuts cross stage boundaries; Hinton's MLP: positive/negative batches)."""
    ref = _local(name)
    net = _model(name)
    trainer = PipelineTrainer(net, stages=stages, balance="layers", schedule="constant", queue_size=3)
    record = trainer.train_epoch(_loader(net.in_channels))
    _assert_same_weights(ref, net)
    assert record["train_images"] == 48 and len(record["train_acc"]) == len(net)
    assert trainer.step_count == 6


def test_train_step_is_one_batch_in_flight():
    ref = _local("deeperforward_tinycnn")
    net = _model()
    trainer = PipelineTrainer(net, stages=2, balance="layers", schedule="constant")
    for xb, yb in _loader():
        res = trainer.train_step(xb, yb)
    _assert_same_weights(ref, net)
    assert res.losses.shape == (len(net),) and res.batch_size == 8


def test_bad_arguments():
    net = _model()
    with pytest.raises(ValueError, match="backend"):
        PipelineTrainer(net, backend="mpi")
    with pytest.raises(ValueError, match="stages must be between"):
        PipelineTrainer(net, stages=9)
    with pytest.raises(ValueError, match="overlap"):
        PipelineTrainer(net, overlap=True)
    with pytest.raises(RuntimeError, match="torchrun"):
        PipelineTrainer(net, backend="distributed")
    with pytest.raises(ValueError, match="timeout"):
        PipelineTrainer(net, timeout=0)


def test_stage_error_names_the_stage(monkeypatch):
    net = _model()
    trainer = PipelineTrainer(net, stages=2, balance="layers", schedule="constant")
    real = net.layers[3].forward

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(net.layers[3], "forward", broken)
    with pytest.raises(PipelineError, match="stage 1 failed: RuntimeError: boom"):
        trainer.train_epoch(_loader())
    del real


def test_stage_checkpoints_resume_to_the_uninterrupted_weights(tmp_path):
    ref = _local("deeperforward_tinycnn", epochs=2)
    net = _model()
    first = PipelineTrainer(net, stages=2, balance="layers", schedule="constant")
    first.fit(_loader(), epochs=1, out_dir=tmp_path, log=None)
    assert {p.name for p in tmp_path.glob("checkpoint*.pt")} == {
        "checkpoint.pt", "checkpoint.stage0-of-2.pt", "checkpoint.stage1-of-2.pt"}
    resumed_net = _model()
    again = PipelineTrainer(resumed_net, stages=2, balance="layers", schedule="constant")
    again.resume(tmp_path / "checkpoint.pt")
    assert again.epoch == 1
    again.fit(_loader(), epochs=2, log=None)
    _assert_same_weights(ref, resumed_net)


def test_stage_file_resume_checks_and_replans_as_a_single_process_resume(tmp_path):
    """A resume from stage files honours a new lr and weight decay (re-planned on every stage's optimizers, the
    curve a run started with them would be at) and refuses another optimizer or schedule before loading anything."""
    first = PipelineTrainer(_model(), stages=2, balance="layers", lr=0.01, final_lr=0.001, total_steps=12)
    first.fit(_loader(), epochs=1, out_dir=tmp_path, log=None)  # 6 of 12 cosine steps

    again = PipelineTrainer(_model(), stages=2, balance="layers", lr=0.002, final_lr=0.0002, weight_decay=0.1,
                            total_steps=12)
    again.resume(tmp_path / "checkpoint.pt")
    expected = 2e-4 + 1.8e-3 * (1 + math.cos(6 * math.pi / 12)) / 2
    lrs = [o.param_groups[0]["lr"] for o in again.optimizers if o is not None]
    assert lrs == pytest.approx([expected] * len(lrs), rel=1e-12) and len(lrs) == 4
    assert all(o.param_groups[0]["weight_decay"] == 0.1 for o in again.optimizers if o is not None)
    assert len(again.resume_notes) == 4 and "lr 0.01 -> 0.002" in again.resume_notes[0]

    for change, message in (({"optimizer": "sgd"}, "trained with optimizer='adam', this trainer has optimizer='sgd'"),
                            ({"schedule": "constant"}, "trained with schedule='cosine'"),
                            ({"total_steps": 4}, "already taken 6 steps, more than this trainer's total_steps=4")):
        net = _model()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        refused = PipelineTrainer(net, stages=2, balance="layers",
                                  **{"lr": 0.01, "final_lr": 0.001, "total_steps": 12, **change})
        with pytest.raises(ValueError, match=re.escape(message)):
            refused.resume(tmp_path / "checkpoint.pt")
        assert refused.epoch == 0 and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def _torchrun(tmp_path, *args, timeout=120, env_extra=None):
    return torchrun(str(WORKER), str(tmp_path / "out.pt"), *args, timeout=timeout, env_extra=env_extra)


@pytest.mark.parametrize("name", ["deeperforward_resnet17", "hinton_mlp"])
def test_distributed_pipeline_equals_local_trainer(tmp_path, name):
    """Two processes over gloo on 127.0.0.1, two epochs: the same weights as LocalTrainer within float tolerance
    (the worker runs one thread, this process two: convolutions sum in another order)."""
    proc, _ = _torchrun(tmp_path, name, "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    ref = _local(name, epochs=2)
    net = _model(name)
    net.load_state_dict(result["state"])
    _assert_same_weights(ref, net, atol=1e-4)
    assert result["record"]["train_images"] == 48


@pytest.mark.parametrize(
    "name,split",
    [("deeperforward_tinycnn", "0,1.5"), ("deeperforward_resnet17", "0,4.625"), ("hinton_mlp", "0,2.25")],
)
def test_distributed_shared_layer_equals_local_trainer(tmp_path, name, split):
    """A layer shared by two stages, each running part of every batch through it and summing the gradients with
    one all_reduce: still LocalTrainer's weights within float tolerance. TinyCNN shares a CW-Conv layer; ResNet17
    layer 4 reads a shortcut from layer 2 and is the source of one into layer 6 (both split by samples); Hinton's
    MLP splits its FFLinear layer by units (each stage trains a quarter / three quarters of the 2000 units on the
    whole batch, their goodness values summed). In float64, so that the comparison is not at the mercy of rounding."""
    proc, _ = _torchrun(tmp_path, name, "2", env_extra={"FFKIT_TEST_STAGES": split, "FFKIT_TEST_DTYPE": "float64"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        net = _model(name)
        net.load_state_dict(result["state"])
        # Splitting a batch only reorders the float sums of the shared layer's gradient; Adam and 12 steps through
        # up to 12 deeper layers amplify such reorderings (in float32 to 2e-3 in ResNet17's layer 16), which float64
        # keeps far below this tolerance.
        _assert_same_weights(_local(name, epochs=2), net, atol=1e-8)
        record = result["record"]
        j = int(float(split.split(",")[1]))
        by, n = ("units", net.layers[j].num_units) if "mlp" in name else ("samples", 8)
        m = round((float(split.split(",")[1]) - j) * n)
        assert record["shared_layers"] == [{"layer": j, "stages": [0, 1], "by": by, "split": [m, n - m]}]
        assert len(record["train_loss"]) == len(net) and record["train_images"] == 48
        # the shared layer's reported loss is the whole batch's: equal to LocalTrainer's (losses are recorded in
        # float32, whatever the training dtype)
        ref = LocalTrainer(_model(name), schedule="constant")
        ref_record = ref.fit(_loader(net.in_channels), epochs=2, log=None)[-1]
        torch.testing.assert_close(torch.tensor(record["train_loss"]), torch.tensor(ref_record["train_loss"]),
                                   atol=1e-6, rtol=1e-6)
    finally:
        torch.set_default_dtype(default)


def test_shared_split_needs_the_distributed_backend_and_separable_layers():
    net = _model()
    with pytest.raises(ValueError, match="backend='distributed'"):
        PipelineTrainer(net, stages=(0, 1.5), schedule="constant")
    with pytest.raises(ValueError, match="no whole layer"):
        PipelineTrainer(net, stages=(0, 0.5), schedule="constant")
    trifecta = create_model("trifecta_shallow", width_multiplier=0.1)
    with pytest.raises(ValueError, match="BatchNorm"):
        PipelineTrainer(trifecta, stages=(0, 1.5), schedule="constant")


def test_resume_takes_the_latest_epoch_every_stage_file_has(tmp_path):
    """Stage 1's epoch-2 file is lost (as when its rank dies between the two ranks' writes): stage 0 goes back to its
    previous file, and the resumed run still ends with the weights of 3 uninterrupted epochs."""
    ref = _local("deeperforward_tinycnn", epochs=3)
    first = PipelineTrainer(_model(), stages=2, balance="layers", schedule="constant")
    first.fit(_loader(), epochs=2, out_dir=tmp_path, log=None)
    names = {p.name for p in tmp_path.glob("checkpoint*.pt")}
    assert names == {"checkpoint.pt", "checkpoint.stage0-of-2.pt", "checkpoint.stage1-of-2.pt",
                     "checkpoint.stage0-of-2.prev.pt", "checkpoint.stage1-of-2.prev.pt"}
    (tmp_path / "checkpoint.stage1-of-2.prev.pt").replace(tmp_path / "checkpoint.stage1-of-2.pt")
    net = _model()
    again = PipelineTrainer(net, stages=2, balance="layers", schedule="constant")
    again.resume(tmp_path / "checkpoint.pt")
    assert again.epoch == 1 and len(again.history) == 1
    again.fit(_loader(), epochs=3, log=None)
    _assert_same_weights(ref, net)
    # no epoch in common: a clear error that lists what each stage has
    (tmp_path / "checkpoint.stage0-of-2.prev.pt").unlink()
    with pytest.raises(ValueError, match=r"no epoch in common \(stage 0: \[2\], stage 1: \[1\]\)"):
        PipelineTrainer(_model(), stages=2, balance="layers", schedule="constant").resume(tmp_path / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint of pipeline stage 0"):
        PipelineTrainer(_model(), stages=2, balance="layers", schedule="constant").resume(tmp_path / "other.pt")


@pytest.mark.parametrize("fault", ["kill:1:8", "stall:1:8", "raise:1:8", "kill-at-save:0:2", "kill-at-save:1:2"])
def test_a_failed_rank_ends_the_job_and_the_stage_checkpoints_resume(tmp_path, fault):
    """A rank killed, stalled or raising in the middle of epoch 2 (its 8th step; 6 steps an epoch), or killed while
    it is about to write its epoch-2 stage file (the other rank's file then says another epoch), ends the whole job
    with a clear error in bounded time (a stall: the timeout; the others: without waiting for it); a new job resumes
    every stage from the latest epoch all stage files have and trains to the weights of 3 uninterrupted epochs of
    LocalTrainer."""
    run_dir = tmp_path / "run"
    kind, rank = fault.split(":")[:2]
    # A stalled peer is found by the timeout; a dead or failing one must end the job without waiting for it.
    timeout = 10 if kind == "stall" else 30
    env = {"FFKIT_TEST_TIMEOUT": str(timeout)}
    proc, seconds = _torchrun(tmp_path, "deeperforward_tinycnn", "3", f"fit:{run_dir}",
                              env_extra={**env, "FFKIT_TEST_FAULT": fault})
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert seconds < (60 if kind == "stall" else timeout), log[-3000:]
    if kind == "raise":  # the failing rank's own error names its stage
        assert "PipelineError: pipeline stage 1 (rank 1 of 2) failed: RuntimeError: injected" in log, log[-3000:]
    if kind == "stall":  # the waiting rank gives up on its silent peer, and says which one
        assert "PipelineError: pipeline stage 0 (rank 0 of 2) lost the next stage (rank 1)" in log, log[-3000:]
    if kind.startswith("kill"):  # the launcher names the rank that died and how
        assert re.search(rf"rank\s*:\s*{rank} \(local_rank: {rank}\)\s*exitcode\s*:\s*-9", log), log[-3000:]
    print(f"{fault}: job ended in {seconds:.1f} s")
    assert (run_dir / "checkpoint.stage0-of-2.pt").is_file()
    proc, _ = _torchrun(tmp_path, "deeperforward_tinycnn", "3", f"fit:{run_dir}", env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    net = _model()
    net.load_state_dict(torch.load(tmp_path / "out.pt")["state"])
    _assert_same_weights(_local("deeperforward_tinycnn", epochs=3), net, atol=1e-4)


def test_distributed_stage_checkpoints_resume(tmp_path):
    """Two processes train one epoch with fit(out_dir) and exit; a new job resumes every stage from its own file and
    trains to two epochs: the weights equal two uninterrupted epochs of LocalTrainer."""
    run_dir = tmp_path / "run"
    proc, _ = _torchrun(tmp_path, "deeperforward_resnet17", "1", f"fit:{run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "checkpoint.stage1-of-2.pt").is_file() and (run_dir / "checkpoint.pt").is_file()
    proc, _ = _torchrun(tmp_path, "deeperforward_resnet17", "2", f"fit:{run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    net = _model("deeperforward_resnet17")
    net.load_state_dict(torch.load(tmp_path / "out.pt")["state"])
    _assert_same_weights(_local("deeperforward_resnet17", epochs=2), net, atol=1e-4)


@pytest.mark.parametrize("name,split", [("deeperforward_tinycnn", "0,1.375"), ("hinton_mlp", "0,2.5")])
def test_distributed_resume_with_a_shared_layer(tmp_path, name, split):
    """Both stages checkpoint their part of the layer they share (by samples: the layer; by units: their shard) with
    its optimizer and schedule, and a new job resumes it: two uninterrupted epochs of LocalTrainer."""
    run_dir, env = tmp_path / "run", {"FFKIT_TEST_STAGES": split}
    for epochs in ("1", "2"):
        proc, _ = _torchrun(tmp_path, name, epochs, f"fit:{run_dir}", env_extra=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    stage0 = torch.load(run_dir / "checkpoint.stage0-of-2.pt", weights_only=False)
    j = int(float(split.split(",")[1]))
    if "mlp" in name:  # the first half of layer 2's units
        assert sorted(stage0["layers"]) == [0, 1] and list(stage0["unit_shards"]) == [j]
        assert stage0["unit_shards"][j][:2] == (0, _model(name).layers[j].num_units // 2)
    else:
        assert sorted(stage0["layers"]) == [0, 1] and stage0["unit_shards"] == {}
    assert stage0["starts"] == [0, float(split.split(",")[1])]
    net = _model(name)
    net.load_state_dict(torch.load(tmp_path / "out.pt")["state"])
    _assert_same_weights(_local(name, epochs=2), net, atol=1e-4)


def test_parse_and_resolve_stages_in_one_place():
    from ffkit.train.pipelining.partition import parse_stages, resolve_stages

    assert parse_stages(" 3 ") == 3 and parse_stages("per-layer") == "per-layer"
    assert parse_stages("0,2") == (0, 2) and parse_stages("0,1.6") == (0, 1.6)
    with pytest.raises(ValueError, match=r"--stages must be N, 'per-layer' or first layers like 0,3; got '0,a'"):
        parse_stages("0,a")
    net = create_model("deeperforward_tinycnn", num_classes=10, in_channels=1, width_multiplier=0.1)
    assert resolve_stages(2, net, backend="threads") == (2, None)
    assert resolve_stages("per-layer", net, backend="threads") == (len(net), None)
    assert resolve_stages((0, 2), net, backend="threads") == (2, (0, 2))
    assert resolve_stages(2, net, backend="distributed", world=3) == (3, None)  # one stage per process
    with pytest.raises(ValueError, match="stages gives 2 stages, but there are 3 processes/devices"):
        resolve_stages((0, 2), net, backend="distributed", world=3)
    with pytest.raises(ValueError, match="needs backend='distributed'"):
        resolve_stages((0, 1.5), net, backend="threads")
    with pytest.raises(ValueError, match=r"stages must be between 1 and the number of layers \(4\), got 5"):
        resolve_stages(5, net, backend="threads")
