"""Hybrid data x pipeline parallelism (``PipelineTrainer(data_parallel=D)``, ``ffkit train --data-parallel D
--pipeline``): two replicas of a two-stage pipeline, four gloo processes on 127.0.0.1, a 2-D device mesh. Each replica
steps its half of every global batch and each stage averages its gradients with its replica's, so the weights are
those of LocalTrainer on the whole batches; a resume is exact; a lost rank ends the job with a clear error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import ffkit
from ffkit.cli import main
from ffkit.data import DEBIAN_FASHION_MNIST_DIR
from helpers.distributed import torchrun
from helpers.replicas import global_batches, largest_difference, local_reference, small_model

WORKER = Path(__file__).parent / "helpers" / "hybrid_worker.py"
MODELS = ("deeperforward_tinycnn", "deeperforward_resnet17", "hinton_mlp")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One four-process launch of every scenario of the worker (a launch is most of a test's time)."""
    out = tmp_path_factory.mktemp("hybrid")
    proc, _ = torchrun(str(WORKER), str(out), "all", timeout=300, procs=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lambda name, rank: torch.load(out / f"{name}.rank{rank}.pt")


def _model(name, **kw):
    return small_model(name, **kw)


@pytest.mark.parametrize("name", MODELS)
def test_two_replicas_of_a_two_stage_pipeline_equal_local_trainer_on_the_whole_batches(job, name):
    """Five Adam steps in float64 through two pipelines of two stages, each replica on half of every global batch of
    16: the weights of LocalTrainer on the whole batches within 1e-10, in both replicas. TinyCNN's split comes from
    automatic balancing on rank 0 (one split for both replicas); ResNet17 has shortcuts across the cut; Hinton's MLP
    positive and negative passes with FixedNEG labels."""
    net = local_reference(name)
    replicas = [job(f"equiv-{name}", r) for r in (0, 2)]
    assert [r["replica"] for r in replicas] == [0, 1] and [r["stage"] for r in replicas] == [0, 0]
    assert replicas[0]["stages"] == replicas[1]["stages"] and len(replicas[0]["stages"]) == 2
    for key, value in net.state_dict().items():
        for got in replicas:
            torch.testing.assert_close(got["weights"][key], value, rtol=0, atol=1e-10, msg=key)
    for got in replicas:  # the epoch record counts both replicas' images
        assert got["record"]["train_images"] == 80 and got["exchanged"] > 0


def test_without_the_replicas_average_the_weights_differ(job):
    """The comparison above can fail: LocalTrainer on one replica's half batches ends elsewhere."""
    net = _model("deeperforward_tinycnn").double()
    x, y = global_batches(3)
    ref = ffkit.LocalTrainer(net, lr=0.01, schedule="constant", device="cpu")
    for b in range(5):
        ref.train_step(x[b * 16 : b * 16 + 8].double(), y[b * 16 : b * 16 + 8])
    assert largest_difference(job("equiv-deeperforward_tinycnn", 0)["weights"], net.state_dict()) > 1e-4


def test_hybrid_resume_gives_the_uninterrupted_weights(job):
    """Random negative labels drawn by each replica's first stage: a run resumed after its first epoch (from replica
    0's stage files, on every replica) ends with exactly the weights of the uninterrupted two epochs."""
    for r in (0, 2):
        got = job("resume", r)
        for key, value in got["whole"].items():
            assert torch.equal(got["resumed"][key], value), key
    assert not torch.equal(job("resume", 0)["whole"]["layers.0.linear.weight"],
                           _model("hinton_mlp", negatives="random").state_dict()["layers.0.linear.weight"])


def test_a_lost_rank_ends_every_other_rank_with_a_clear_error(tmp_path):
    """Rank 3 (replica 1's second stage) leaves after its first step: its pipeline neighbour and the replica of its
    stage stop with a PipelineError naming the stage and the peer within the 5 s timeout, and so does the rest.

    Rank 1 learns of it in one of two ways, depending on which peer's loss reaches it first: in its next gradient
    all-reduce with rank 3, or from rank 0 (which failed in its own all-reduce with rank 2) while waiting for its
    next batch; either names rank 1 and the peer."""
    proc, seconds = torchrun(str(WORKER), str(tmp_path), "leave", timeout=180, procs=4)
    errors = {r: torch.load(tmp_path / f"leave.rank{r}.pt") for r in (0, 1, 2)}
    for r, got in errors.items():
        assert got["error"] is not None and got["seconds"] < 60, (r, got)
        assert f"(rank {r} of 4)" in got["error"], (r, got)
    assert re.search(r"stage 1 of replica 0 \(rank 1 of 4\) failed (waiting for|in) a gradient all-reduce|"
                     r"pipeline stage 1 \(rank 1 of 4\) lost the previous stage \(rank 0\)", errors[1]["error"])
    assert "pipeline stage 0 (rank 2 of 4) lost the next stage (rank 3)" in errors[2]["error"]
    assert seconds < 120


needs_fmnist = pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(),
                                  reason="Debian package dataset-fashion-mnist is not installed")
QUICK = ["--width-multiplier", "0.2", "--limit", "512", "--eval-limit", "256", "--no-progress", "--lr", "0.01"]


@needs_fmnist
def test_torchrun_hybrid_trains_and_resumes(tmp_path):
    """`torchrun --nproc-per-node 4 -m ffkit train ... --data-parallel 2 --pipeline`: two replicas of two stages;
    rank 0 alone reports and writes; a resume for a second epoch continues from the stage files."""

    def run(*extra):
        proc, _ = torchrun("-m", "ffkit", "train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"),
                           "--out", str(tmp_path / "run"), "--json", "--data-parallel", "2", "--pipeline",
                           "--pipeline-timeout", "30", "--batch-size", "64", *QUICK, *extra, timeout=240, procs=4)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert len(lines) == 1  # only rank 0 prints
        return json.loads(lines[0]), json.loads((tmp_path / "run" / "metrics.json").read_text())

    summary, metrics = run()
    assert summary["epochs"] == 1 and 0.0 < summary["test_accuracy"] <= 1.0
    assert metrics[-1]["train_images"] == 512 and len(metrics[-1]["stages"]) == 2
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint.stage*-of-2.pt")) == [
        "checkpoint.stage0-of-2.pt", "checkpoint.stage1-of-2.pt"]
    summary, metrics = run("--epochs", "2", "--resume")
    assert summary["epochs"] == 2 and [r["epoch"] for r in metrics] == [1, 2]


@pytest.mark.parametrize("flags,world,message", [
    (["--data-parallel", "--pipeline"], "4", "--data-parallel with --pipeline needs the number of replicas"),
    (["--data-parallel", "3", "--pipeline"], "4", "--data-parallel 3 must divide torchrun's 4 processes"),
    (["--data-parallel", "2"], "4", "--data-parallel 2 without --pipeline runs one replica per process"),
    (["--data-parallel", "2", "--pipeline", "--pipeline-variant", "federated"], "4",
     "--data-parallel with --pipeline replicates a pipeline of stages; it conflicts with --pipeline-variant federated"),
    (["--data-parallel", "2", "--pipeline", "--batch-size", "7"], "4",
     "--batch-size 7 (the global batch) must be a multiple of the 2 data-parallel replicas"),
    (["--data-parallel", "2", "--pipeline", "--stages", "3"], "4",
     "--stages 3 conflicts with torchrun's 4 processes as 2 replicas: each replica has 2 stages"),
    (["--data-parallel", "0"], "4", "expected a positive int"),
    (["--data-parallel", "2", "--pipeline", "--shard-parameters"], "4",
     "--shard-parameters shards every layer over the data-parallel processes; it conflicts with --pipeline"),
    (["--sync-batchnorm"], "4", "--sync-batchnorm only applies to --data-parallel training"),
    (["--shard-parameters", "--pipeline"], "4", "--shard-parameters only applies to --data-parallel training"),
])
def test_cli_hybrid_refusals(tmp_path, capsys, monkeypatch, flags, world, message):
    """Each wrong combination is refused before any process group or data, naming the flags."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", world)
    try:
        code = main(["train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "none"), *flags, *QUICK])
    except SystemExit as e:  # argparse refuses a bad number itself
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_pipeline_trainer_hybrid_refusals():
    net = _model("deeperforward_tinycnn")
    with pytest.raises(ValueError, match="data_parallel=2 replicates the pipeline over processes: it needs "
                                         "backend='distributed'"):
        ffkit.PipelineTrainer(net, data_parallel=2)
    with pytest.raises(ValueError, match="data_parallel must be"):
        ffkit.PipelineTrainer(net, data_parallel=0)
    with pytest.raises(ValueError, match="sync_batchnorm shares BatchNorm statistics between the replicas of a stage: "
                                         "it needs data_parallel > 1"):
        ffkit.PipelineTrainer(net, sync_batchnorm=True)


def test_synchronised_batchnorm_across_replicas_equals_local_trainer_on_the_whole_batches(job):
    """CwComp's CNN has a BatchNorm in every layer: with ``sync_batchnorm=True`` each replica's stages normalise with
    the whole global batch's statistics, so weights and running statistics are LocalTrainer's on the whole batches
    (float64, within 1e-10); without it, each replica's half batch gives other statistics and other weights."""
    net = local_reference("cwcomp_cnn")
    for r in (0, 2):
        got = job("syncbn", r)["weights"]
        assert any("running_var" in k for k in got)
        for key, value in net.state_dict().items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-10, msg=key)
    assert largest_difference(job("plainbn", 0)["weights"], net.state_dict()) > 1e-3
