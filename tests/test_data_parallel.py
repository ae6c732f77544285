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
from helpers.replicas import SMALL, largest_difference, local_reference, small_model

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
    return small_model(name)


@pytest.mark.parametrize("name", MODELS)
def test_two_ranks_on_half_batches_equal_local_trainer_on_the_whole_batches(job, name):
    """Five Adam steps in float64 (ResNet17: shortcuts; Hinton's MLP: positive and negative passes with FixedNEG
    labels, the same for a sample on any rank): the same weights within 1e-10, on both ranks."""
    net = local_reference(name)
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
    (["--data-parallel", "--pipeline"], "--data-parallel with --pipeline needs the number of replicas"),
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


# -- sync_batchnorm and shard_parameters ---------------------------------------------------------------------------

#: float64, five Adam steps: the largest differences measured were 1.9e-11 (sync_batchnorm, the Trifecta) and 4.9e-15
#: (shard_parameters)
TOL = 1e-10


@pytest.fixture(scope="module")
def options_job(tmp_path_factory):
    """One two-process launch of the worker's ``options`` scenarios (about 20 s on two cores)."""
    out = tmp_path_factory.mktemp("data_parallel_options")
    proc, _ = torchrun(str(WORKER), str(out), "options", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lambda name, rank: torch.load(out / f"{name}.rank{rank}.pt")


def _local_run(name):
    """LocalTrainer's five Adam steps on the whole global batches (the worker's data), float64."""
    return local_reference(name).state_dict()


def test_cpu_sync_batchnorm_equals_batchnorm2d_on_the_whole_batch(options_job):
    """Two ranks with three samples each: the output and the input gradient of each rank's rows, the weight and bias
    gradients summed over the ranks, and the running statistics (unbiased variance of all six samples) are those of
    one BatchNorm2d on all six."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    weights = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    bn = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    out = bn(x)
    (out * weights).sum().backward()
    ranks = [options_job("bn", r) for r in (0, 1)]
    assert {r["type"] for r in ranks} == {"SyncBatchNorm"}
    close = {"rtol": 0, "atol": 1e-12}
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, **close)
    torch.testing.assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], bn.weight.grad, **close)
    torch.testing.assert_close(ranks[0]["bias_grad"] + ranks[1]["bias_grad"], bn.bias.grad, **close)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean, **close)
        torch.testing.assert_close(r["running_var"], bn.running_var, **close)


@pytest.mark.parametrize("name", ["cwcomp_cnn", "trifecta_shallow", "dtg_vgg8"])
def test_sync_batchnorm_on_half_batches_equals_local_trainer_on_the_whole_batches(options_job, name):
    """CwComp (BatchNorm2d after each conv), the Trifecta (BatchNorm2d on each layer's input, a learned label
    encoder) and DTG's VGG8 (a BatchNorm1d classifier head): after five Adam steps in float64, every weight and every
    running statistic equals LocalTrainer's on the whole batches; without the option the weights differ."""
    want = _local_run(name)
    for r in (0, 1):
        result = options_job(f"syncbn-{name}", r)
        assert "SyncBatchNorm" in result["types"] and "BatchNorm2d" not in result["types"]
        assert result["weights"].keys() == want.keys()
        assert largest_difference(result["weights"], want) < TOL
        assert largest_difference(result["plain"], want) > 1e-4  # per-rank statistics: the test can fail
    running = [k for k in want if k.endswith(("running_mean", "running_var"))]
    assert running


def test_sync_batchnorm_with_sharded_parameters(options_job):
    want = _local_run("cwcomp_cnn")
    for r in (0, 1):
        assert largest_difference(options_job("both-cwcomp_cnn", r)["weights"], want) < TOL


@pytest.mark.parametrize("name", ["deeperforward_tinycnn", "hinton_mlp", "dtg_vgg8"])
def test_sharded_parameters_on_half_batches_equal_local_trainer_on_the_whole_batches(options_job, name):
    """FSDP2 per layer: the gathered weights after five Adam steps equal LocalTrainer's on the whole batches; each
    rank holds half of every sharded parameter (rows on dim 0, rounded up) and less than 60 % of the unsharded
    bytes of parameters, gradients and Adam moments; DTG's scalar parameters stay whole and are averaged by the
    trainer's own all-reduce (DTG's VGG8 also synchronises its head's BatchNorm)."""
    want = _local_run(name)
    for r in (0, 1):
        result = options_job(f"shard-{name}", r)
        assert largest_difference(result["weights"], want) < TOL
        sizes = result["sizes"]
        assert sizes
        for key, (whole, local) in sizes.items():
            rows = want[key].shape[0]
            mine = (rows + 1) // 2 if r == 0 else rows - (rows + 1) // 2
            assert local == whole // rows * mine, key
        sharded, plain = result["bytes"], result["bytes_unsharded"]
        assert sharded["total"] < 0.6 * plain["total"]
        assert sharded["optimizer_state"] < 0.6 * plain["optimizer_state"]
        scalars = [k for k, v in want.items() if v.dim() == 0 and v.is_floating_point() and "running" not in k]
        assert (result["exchanged"] > 0) == any(k not in sizes for k in scalars)


def test_a_sharded_checkpoint_loads_into_a_plain_local_trainer_and_resumes_exactly(options_job):
    """Rank 0's checkpoint after the first epoch holds the whole weights and Adam moments (a single-process
    LocalTrainer resumes from it), and two sharded ranks resumed from it end with the uninterrupted weights."""
    result = options_job("shard-resume", 0)
    net = small_model("deeperforward_tinycnn")
    plain = ffkit.LocalTrainer(net, lr=0.01, total_steps=6)
    plain.resume(result["checkpoint"])
    for key, value in result["first"].items():
        assert torch.equal(net.state_dict()[key], value), key
    for opt in plain.optimizers:
        for p, state in opt.state.items():
            assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
    for r in (0, 1):
        result = options_job("shard-resume", r)
        for key, value in result["whole"].items():
            assert torch.equal(result["resumed"][key], value), (r, key)


def test_sharded_evaluation_shared_by_the_ranks_equals_one_process(options_job):
    for r in (0, 1):
        result = options_job("shard-eval", r)
        for report in (result["shared"], result["again"]):
            assert report.keys() == result["alone"].keys()
            for key in result["alone"]:
                _assert_close(report[key], result["alone"][key], key)
        assert result["resharded"]


def test_step_undo_restores_sharded_parameters_and_moments(options_job):
    for r in (0, 1):
        result = options_job("shard-undo", r)
        assert result["moved"] and result["restored"] and result["exact"]


@pytest.mark.parametrize(("options", "message"), [
    ({"overlap": True}, "shard_parameters=True conflicts with overlap=True (OLU)"),
    ({"channels_last": True}, "shard_parameters=True conflicts with channels_last=True"),
    ({"compile": "aot_eager"}, "shard_parameters=True conflicts with compile"),
    ({"fused_optimizer": True}, "shard_parameters=True conflicts with fused_optimizer=True for this network"),
])
def test_shard_parameters_refuses_what_it_cannot_shard(options, message):
    net = create_model("trifecta_shallow", width_multiplier=0.1)  # its learned label encoder stays whole
    with pytest.raises(ValueError, match=re.escape(message)):
        ffkit.train.DataParallelTrainer(net, shard_parameters=True, **options)


@pytest.mark.parametrize("name", ["sync_batchnorm", "shard_parameters"])
def test_options_must_be_bools(name):
    with pytest.raises(TypeError, match=f"{name} must be a bool"):
        ffkit.train.DataParallelTrainer(_model("deeperforward_tinycnn"), **{name: 1})


@pytest.mark.parametrize("name", ["cwcomp_cnn", "trifecta_shallow", "trifecta_fcn", "dtg_vgg8"])
def test_sync_batchnorm_conversion_keeps_keys_tensors_and_counts(name):
    """In place, on the same tensors: the state_dict's keys, the parameter count and the values do not change, a
    converted network's checkpoint loads into an unconverted one, and the layers' small-batch checks still apply."""
    from ffkit.train.sync_batchnorm import SyncBatchNorm, sync_batchnorm

    kw = {"trifecta_fcn": {"width_multiplier": 0.05}}.get(name, SMALL.get(name, {}))
    net = create_model(name, **kw)
    before = dict(net.state_dict(keep_vars=True))
    count = sum(p.numel() for p in net.parameters())
    assert sync_batchnorm(net) is net
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is SyncBatchNorm for m in norms)
    after = net.state_dict(keep_vars=True)
    assert list(after) == list(before) and all(after[k] is v for k, v in before.items())
    assert sum(p.numel() for p in net.parameters()) == count
    create_model(name, **kw).load_state_dict(net.state_dict())
    if net.head is not None:
        assert net.head.min_batch_size == 2
    if name == "trifecta_fcn":
        with pytest.raises(ValueError, match="needs at least 2 samples per training batch"):
            net.layers[0](torch.randn(1, net.layers[0].linear.in_features))


def test_sync_batchnorm_without_a_process_group_is_batchnorm():
    """Outside torch.distributed (and in eval mode) the converted norm computes what BatchNorm2d does."""
    from ffkit.train.sync_batchnorm import sync_batchnorm

    bn = torch.nn.BatchNorm2d(4)
    ref = torch.nn.BatchNorm2d(4)
    x = torch.randn(5, 4, 3, 3)
    converted = sync_batchnorm(torch.nn.Sequential(bn))
    torch.testing.assert_close(converted(x), ref(x))
    converted.eval(), ref.eval()
    torch.testing.assert_close(converted(x), ref(x))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        sync_batchnorm("bn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="group must be a torch.distributed.ProcessGroup"):
        sync_batchnorm(bn, group=0)  # type: ignore[arg-type]


_EXIT_SCRIPT = """
import atexit
import torch.distributed as dist
atexit.register(lambda: print("initialised at exit:", dist.is_initialized(), flush=True))  # runs after ffkit's
from ffkit.train import DataParallelTrainer, init_distributed
from ffkit.models import create_model
init_distributed(timeout=10)
once = atexit._ncallbacks()
init_distributed(timeout=10)
DataParallelTrainer(create_model("deeperforward_tinycnn"), schedule="constant")
print("hooks added again:", atexit._ncallbacks() - once, flush=True)
"""


def test_a_script_that_never_destroys_its_process_group_exits_cleanly(tmp_path):
    """gloo's threads drop finished work under the GIL; ffkit's exit hook (registered once, however many times
    ``init_distributed`` runs) frees the GIL for them and destroys the group before the interpreter finalizes, which
    otherwise ended about one two-process run in eight with SIGABRT after the script's last line."""
    import os
    import subprocess
    import sys

    from helpers.distributed import free_port

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hooks added again: 0" in proc.stdout
    assert "initialised at exit: False" in proc.stdout
