"""FederatedTrainer: every rank trains the whole network on its shard and the ranks average their parameters (FedAvg),
across two processes launched by torchrun over gloo on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from ffkit.models import create_model
from ffkit.train import LocalTrainer
from ffkit.train.federated import FederatedTrainer, shard_loader
from helpers.distributed import torchrun

WORKER = Path(__file__).parent / "helpers" / "federated_worker.py"


def _model():
    torch.manual_seed(0)  # rank 0's seed in the worker: the start every rank gets from the initial broadcast
    return create_model("deeperforward_tinycnn", width_multiplier=0.1, in_channels=3, dropout=0.0)


def _torchrun(out: Path, scenario: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    return torchrun(str(WORKER), str(out), scenario, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch runs every scenario of the worker; ``runs(name)`` is ``[rank 0's result, rank 1's]``."""
    out = tmp_path_factory.mktemp("federated")
    proc, _ = _torchrun(out, "all")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    def load(name):
        return [torch.load(out / f"{name}.rank{r}.pt") for r in range(2)]

    load.out = out
    return load


def _assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_ranks_end_with_identical_parameters(runs):
    """Plain SGD, sync_every=1, two epochs of fit on disjoint shards: bit-identical parameters on both ranks; the
    record covers both ranks' images; rank 0's checkpoint resumes to the same parameters on every rank."""
    r0, r1 = runs("fit")
    _assert_equal_states(r0["state"], r1["state"])
    assert _differ(r0["state"], _model().state_dict())  # it did train
    assert r0["step_count"] == 6  # 24 images per rank, batches of 8, two epochs
    for h0, h1 in zip(r0["history"], r1["history"]):
        assert h0["train_images"] == 48 and h0["ranks"] == 2
        assert h0["train_loss"] == pytest.approx(h1["train_loss"]) and h0["train_acc"] == h1["train_acc"]
    assert sorted(p.name for p in (runs.out / "fit").iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.json",
                                                                    "metrics.jsonl"]
    records = [json.loads(line) for line in (runs.out / "fit" / "metrics.jsonl").read_text().splitlines()]
    # rank 0's step records (its 3 batches of 8 per epoch), then the epoch records over both ranks
    assert [(r["kind"], r["step"], r.get("train_images")) for r in records] == [
        ("step", 3, 24), ("epoch", 3, 48), ("step", 6, 24), ("epoch", 6, 48)]
    for r in (r0, r1):
        _assert_equal_states(r["resumed"], r0["state"])
        assert r["resumed_epoch"] == 2 and r["resumed_step_count"] == 6


def test_one_step_is_the_average_of_two_local_steps(runs):
    """From rank 0's start (rank 1 began from another seed), one federated step equals the mean of two independent
    LocalTrainer steps on each rank's batch."""
    results = runs("one_step")
    assert not torch.equal(results[0]["x"], results[1]["x"])  # disjoint shards
    local = []
    for r in results:
        net = _model()
        LocalTrainer(net, schedule="constant").train_step(r["x"], r["y"])
        local.append(net.state_dict())
    for k, v in local[0].items():
        if v.is_floating_point():
            expected = (v + local[1][k]) / 2
            for r in results:
                torch.testing.assert_close(r["state"][k], expected, atol=1e-5, rtol=0, msg=k)
    assert results[0]["syncs"] == 1


def test_sync_every_two_averages_at_chapter_ends_and_epoch_end(runs):
    """Three steps with sync_every=2: the ranks differ after steps 1 and 3, agree after step 2 and after the epoch."""
    r0, r1 = runs("sync2")
    after = list(zip(r0["steps"], r1["steps"]))
    assert len(after) == 3
    assert _differ(*after[0]) and not _differ(*after[1]) and _differ(*after[2])
    _assert_equal_states(r0["final"], r1["final"])
    assert r0["syncs"] == 2 and r0["step_count"] == 3  # step 2, then the epoch end
    timing = ("train_seconds", "train_images_per_s")  # each rank measures its own clock
    records = [{k: v for k, v in r["record"].items() if k not in timing} for r in (r0, r1)]
    assert records[0] == records[1] and records[0]["train_images"] == 48


def test_batchnorm_running_statistics_are_averaged(runs):
    r0, r1 = runs("bn")
    stats = [k for k in r0["state"] if k.endswith(("running_mean", "running_var"))]
    assert stats
    _assert_equal_states(r0["state"], r1["state"])
    assert any(r0["state"][k].abs().sum() > 0 for k in stats if k.endswith("running_mean"))


def test_unequal_shards_stop_every_rank_before_training(runs):
    for r in runs("mismatch"):
        assert "same number of steps per epoch" in r["message"] and "[3, 2]" in r["message"]
        assert r["step_count"] == 0


@pytest.mark.parametrize("fault", ["stall", "leave"])
def test_a_lost_rank_ends_the_job_with_a_clear_error(tmp_path, fault):
    """Rank 1 stalls (rank 0's 2 s timeout) or closes its process group: rank 0 stops with a PipelineError naming
    itself and the collective."""
    proc, seconds = _torchrun(tmp_path, fault, timeout=60)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "PipelineError: federated rank 0 of 2 failed in averaging parameters after step 1" in log, log[-4000:]
    assert seconds < 40


def test_bad_arguments():
    net = _model()
    with pytest.raises(ValueError, match="sync_every"):
        FederatedTrainer(net, sync_every=0)
    with pytest.raises(TypeError, match="sync_every must be an int"):
        FederatedTrainer(net, sync_every=True)
    with pytest.raises(ValueError, match="timeout"):
        FederatedTrainer(net, timeout=0)
    with pytest.raises(TypeError, match="network"):
        FederatedTrainer(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="torchrun"):
        FederatedTrainer(net)


def test_shard_loader_gives_disjoint_equal_shards():
    data = TensorDataset(torch.arange(50).float().view(50, 1), torch.zeros(50, dtype=torch.long))
    shards = [shard_loader(data, 4, seed=3, num_replicas=2, rank=r) for r in range(2)]
    assert [len(s) for s in shards] == [7, 7]  # 25 samples per rank in batches of 4
    seen = [torch.cat([x for x, _ in s]).view(-1) for s in shards]
    assert len(set(seen[0].tolist()) | set(seen[1].tolist())) == 50
    shards[0].sampler.set_epoch(1)
    assert not torch.equal(torch.cat([x for x, _ in shards[0]]).view(-1), seen[0])
    with pytest.raises(ValueError, match="batch_size"):
        shard_loader(data, 0, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="sampler"):
        shard_loader(data, 4, num_replicas=2, rank=0, shuffle=False, sampler=None)
