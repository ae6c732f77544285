"""Pipeline balancing: exact stage splits, stage costs, user splits, and per-layer profiling that leaves no trace."""

import copy
import itertools

import pytest
import torch

from ffkit import LocalTrainer
from ffkit.models import create_model
from ffkit.train.balance import (
    LayerCosts,
    balance_stages,
    check_split,
    profile_layers,
    shared_layers,
    stage_balance,
    stage_times,
)

F32 = 4  # bytes per float32 element


# -- balance_stages -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "num_stages", "expected"),
    [
        ([1, 1, 1, 1], 2, (0, 2)),  # 2 | 2
        ([4, 1, 1, 1, 1], 2, (0, 1)),  # 4 | 4
        # 15 in 3 stages: a max of 5 would need 5 | 5 | 5, but 1 + 2 = 3 and 1 + 2 + 3 = 6; 6 | 4 | 5 is the only
        # split with max 6 (1 + 2 | 3 + 4 | 5 has 7)
        ([1, 2, 3, 4, 5], 3, (0, 3, 4)),
        ([1, 1, 1, 1], 1, (0,)),
        ([3, 1, 4, 1, 5], 5, (0, 1, 2, 3, 4)),  # one layer each
        ([2.5], 1, (0,)),
    ],
)
def test_hand_worked_splits(seconds, num_stages, expected):
    assert balance_stages(seconds, num_stages) == expected


def test_ties_go_to_the_most_even_split_then_the_earliest_cut():
    # [5] must be alone (max 5); the rest 1+1+1+1 in two stages: 1|3, 2|2, 3|1 all stay under 5, 2|2 is most even
    assert balance_stages([5, 1, 1, 1, 1], 3) == (0, 1, 3)
    # 1 | 2+1 and 1+2 | 1: same max and same sum of squares; the earlier cut keeps the first stage lightest
    assert balance_stages([1, 2, 1], 2) == (0, 1)


def test_communication_pushes_a_boundary():
    seconds = [1, 1, 1, 1]
    assert balance_stages(seconds, 2) == (0, 2)
    # Sending layer 1's output costs 10 s and layer 0's 5 s: cutting after layer 2 (free to send) now wins, 3 | 1
    # (cut after 0: 1 + 5 | 3 -> 6; after 1: 2 + 10 | 2 -> 12; after 2: 3 + 0 | 1 -> 3)
    kw = {"output_bytes": [5, 10, 0, 0], "bytes_per_second": 1.0}
    assert balance_stages(seconds, 2, **kw) == (0, 3)
    assert stage_times(seconds, (0, 3), **kw) == [3.0, 1.0]
    assert stage_times(seconds, (0, 2), **kw) == [12.0, 2.0]


def test_the_last_stage_sends_nothing():
    # Layer 1's output is huge but nothing follows it: both stages cost 1
    kw = {"output_bytes": [0, 10**9], "bytes_per_second": 1.0}
    assert stage_times([1, 1], (0, 1), **kw) == [1.0, 1.0]
    assert stage_times([1, 1], (0,), **kw) == [2.0]


def _brute_force(seconds, num_stages, send):
    n = len(seconds)
    best = None
    for cuts in itertools.combinations(range(1, n), num_stages - 1):
        starts = (0, *cuts)
        times = stage_times(seconds, starts, *send)
        key = (max(times), sum(t * t for t in times), starts)
        best = key if best is None or key < best else best
    return best


@pytest.mark.parametrize("comm", [False, True])
def test_matches_exhaustive_search(comm):
    gen = torch.Generator().manual_seed(7)
    for trial in range(40):
        n = 1 + trial % 8
        seconds = (torch.rand(n, generator=gen) * 10).round().tolist()  # integers: many exact ties
        send = ((torch.rand(n, generator=gen) * 4).round().tolist(), 2.0) if comm else (None, None)
        for s in range(1, n + 1):
            starts = balance_stages(seconds, s, output_bytes=send[0], bytes_per_second=send[1])
            worst, squares, expected = _brute_force(seconds, s, send)
            assert starts == expected, (seconds, s, send)
            assert max(stage_times(seconds, starts, *send)) == worst


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seconds": [1, 1], "num_stages": 3}, ValueError, "num_stages must be between 1 and the number of layers"),
        ({"seconds": [1, 1], "num_stages": 0}, ValueError, "num_stages"),
        ({"seconds": [1, 1], "num_stages": 1.0}, TypeError, "num_stages must be an int"),
        ({"seconds": [1, 1], "num_stages": True}, TypeError, "num_stages must be an int"),
        ({"seconds": [1, -1], "num_stages": 1}, ValueError, r"seconds\[1\] must be a finite non-negative"),
        ({"seconds": [1, float("nan")], "num_stages": 1}, ValueError, r"seconds\[1\]"),
        ({"seconds": [float("inf")], "num_stages": 1}, ValueError, r"seconds\[0\]"),
        ({"seconds": [], "num_stages": 1}, ValueError, "seconds must not be empty"),
        ({"seconds": "12", "num_stages": 1}, TypeError, "seconds must be a sequence"),
        ({"seconds": [1, "2"], "num_stages": 1}, TypeError, r"seconds\[1\] must be a number"),
        ({"seconds": [1, 1], "num_stages": 2, "output_bytes": [1, 1]}, ValueError, "given together"),
        ({"seconds": [1, 1], "num_stages": 2, "bytes_per_second": 1.0}, ValueError, "given together"),
        (
            {"seconds": [1, 1], "num_stages": 2, "output_bytes": [1], "bytes_per_second": 1.0},
            ValueError,
            "output_bytes must have one entry per layer",
        ),
        (
            {"seconds": [1, 1], "num_stages": 2, "output_bytes": [1, 1], "bytes_per_second": 0.0},
            ValueError,
            "bytes_per_second must be a positive",
        ),
        (
            {"seconds": [1, 1], "num_stages": 2, "output_bytes": [1, -1], "bytes_per_second": 1.0},
            ValueError,
            r"output_bytes\[1\]",
        ),
    ],
)
def test_balance_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        balance_stages(**kwargs)


def test_accepts_tensors_and_layer_costs():
    assert balance_stages(torch.tensor([4.0, 1.0, 1.0, 1.0, 1.0]), 2) == (0, 1)
    costs = LayerCosts(seconds=(1.0, 1.0, 1.0, 1.0), peak_bytes=(0, 0, 0, 0), output_bytes=(5, 10, 0, 0))
    assert balance_stages(costs.seconds, 2, output_bytes=costs.output_bytes, bytes_per_second=1) == (0, 3)
    with pytest.raises(ValueError, match="one entry per layer"):
        LayerCosts(seconds=(1.0,), peak_bytes=(0, 0), output_bytes=(0,))


# -- stage_times, stage_balance, check_split ----------------------------------------------------------------------
def test_stage_times_and_balance_by_hand():
    seconds = [1, 2, 3, 4, 5]
    assert stage_times(seconds, (0, 3, 4)) == [6.0, 4.0, 5.0]
    # sending costs 10/10, 20/10, ... seconds: stage 0 sends layer 2's output (+3), stage 1 layer 3's (+4)
    assert stage_times(seconds, [0, 3, 4], [10, 20, 30, 40, 50], 10) == [9.0, 8.0, 5.0]
    assert stage_balance([6.0, 4.0, 5.0]) == pytest.approx(6 / 5)
    assert stage_balance([2.0, 2.0]) == 1.0
    assert stage_balance([3.0, 0.0, 0.0]) == pytest.approx(3.0)  # everything in one of 3 stages: the worst
    assert stage_balance([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="times must not be empty"):
        stage_balance([])
    with pytest.raises(ValueError, match="starts must be"):
        stage_times(seconds, (0, 5))


# -- shared layers ------------------------------------------------------------------------------------------------
def test_shared_split_by_hand():
    """0.39, 0.52, 0.20, 0.32 s: whole layers give at best 0.91 | 0.52 (balance 1.27). Half of 1.43 s is 0.715 s,
    which layer 0 (0.39) plus 0.325 / 0.52 = 0.625 of layer 1 reach: the cut 1.625, 0.715 | 0.715 s."""
    t = [0.39, 0.52, 0.20, 0.32]
    assert balance_stages(t, 2) == (0, 2)
    split = balance_stages(t, 2, shareable=[True] * 4)
    assert split[0] == 0 and split[1] == pytest.approx(1.625)
    assert stage_times(t, split) == pytest.approx([0.715, 0.715])
    assert shared_layers(split) == {1: pytest.approx(0.625)}
    # layer 1 may not be shared (BatchNorm): the whole-layer split stays
    assert balance_stages(t, 2, shareable=[True, False, True, True]) == (0, 2)


def test_shared_split_only_when_it_gains_enough():
    # 1, 1, 1.2, 1: whole layers give 2 | 2.2; sharing 1/12 of layer 2 gives 2.1 | 2.1, 4.5% faster
    t = [1, 1, 1.2, 1]
    assert balance_stages(t, 2, shareable=[True] * 4)[1] == pytest.approx(2 + 1 / 12)
    assert balance_stages(t, 2, shareable=[True] * 4, min_gain=0.05) == (0, 2)


def test_shared_split_snaps_small_shares_and_keeps_a_whole_layer_per_stage():
    # the cut 2.02 leaves 2% of layer 2 on stage 0: below min_share it snaps to the boundary 2
    assert balance_stages([1, 1, 1, 0.96], 2, shareable=[True] * 4, min_gain=0.0) == (0, 2)
    # 3 stages over 0.39, 0.52, 0.20, 0.32: cuts 1.167 and 2.217 would leave stage 1 no whole layer
    assert balance_stages([0.39, 0.52, 0.20, 0.32], 3, shareable=[True] * 4) == (0, 1, 2)


def test_stage_times_charges_a_shared_layers_sends():
    # sending: layer 0's output costs 1 s, layer 1's 3 s; the cut 1.25 sends 0.75 of layer 0's rows and 0.25 of
    # layer 1's: 0.75 + 0.75 = 1.5 s on stage 0
    times = stage_times([2, 4, 2], (0, 1.25), output_bytes=[1, 3, 5], bytes_per_second=1.0)
    assert times == pytest.approx([2 + 1 + 1.5, 3 + 2])


@pytest.mark.parametrize(
    ("starts", "match"),
    [((0, 0.5), "stage 0 .* owns no whole layer"), ((0, 1.5, 2.5), "stage 1 .* owns no whole layer"),
     ((0, 3.5), "stage 1 .* owns no whole layer"), ((0, float("nan")), "finite")],
)
def test_check_split_shared_errors(starts, match):
    with pytest.raises(ValueError, match=match):
        check_split(starts, 4, shared=True)


def test_check_split_shared_forms():
    assert check_split((0, 2.0), 4, shared=True) == (0, 2)
    assert check_split([0, torch.tensor(1.5)], 4, shared=True) == (0, 1.5)
    with pytest.raises(TypeError, match="must be an int"):
        check_split((0, 1.5), 4)


def test_check_split_accepts_starts():
    assert check_split((0, 2), 4) == (0, 2)
    assert check_split([0, 1, 3], 4) == (0, 1, 3)
    assert check_split(range(4), 4) == (0, 1, 2, 3)
    assert check_split((0,), 1) == (0,)
    assert check_split(torch.tensor([0, 2]).tolist(), 4) == (0, 2)


@pytest.mark.parametrize(
    ("starts", "error", "match"),
    [
        ((1, 3), ValueError, r"starting at 0.*e\.g\. \(0, 2\) for two stages, layers 0\.\.1 and 2\.\.3"),
        ((0, 2, 2), ValueError, "strictly increasing"),
        ((0, 3, 2), ValueError, "strictly increasing"),
        ((0, 4), ValueError, "below num_layers=4"),
        ((), ValueError, "must not be empty"),
        ((0, 1.5), TypeError, r"starts\[1\] must be an int"),
        ((0, True), TypeError, r"starts\[1\] must be an int"),
        (2, TypeError, "starts must be a sequence of ints"),
        ("02", TypeError, "starts must be a sequence of ints"),
        ((2, 2), ValueError, r"looks like stage sizes, whose starts are \(0, 2\)"),
    ],
)
def test_check_split_errors(starts, error, match):
    with pytest.raises(error, match=match):
        check_split(starts, 4)


def test_check_split_num_layers():
    with pytest.raises(ValueError, match="num_layers must be at least 1"):
        check_split((0,), 0)
    with pytest.raises(TypeError, match="num_layers must be an int"):
        check_split((0,), 4.0)
    with pytest.raises(ValueError, match=r"\(0,\)"):
        check_split((0, 1), 1)


# -- profile_layers -----------------------------------------------------------------------------------------------
def _images(batch=8, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def _feature_bytes(net, x, y):
    """Bytes of each layer's features on the training pass, from a plain forward."""
    with torch.no_grad():
        batch = net.objective.prepare(net, x, y)
        return [out.features.numel() * out.features.element_size() for _, out in net.iter_layers(batch.inputs)]


def _assert_same_training_state(a: LocalTrainer, b: LocalTrainer):
    for (name, ta), (_, tb) in zip(a.network.state_dict().items(), b.network.state_dict().items()):
        assert torch.equal(ta, tb), name
    sa, sb = a.state_dict(), b.state_dict()
    assert (sa["epoch"], sa["step_count"], sa["history"]) == (sb["epoch"], sb["step_count"], sb["history"])
    assert sa["schedulers"] == sb["schedulers"]
    for k, (oa, ob) in enumerate(zip(sa["optimizers"], sb["optimizers"])):
        if oa is None:
            assert ob is None
            continue
        assert oa["param_groups"] == ob["param_groups"], k
        assert oa["state"].keys() == ob["state"].keys(), k
        for p in oa["state"]:
            for key, va in oa["state"][p].items():
                vb = ob["state"][p][key]
                assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, (k, p, key)
    for pa, pb in zip(a.network.parameters(), b.network.parameters()):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            assert torch.equal(pa.grad, pb.grad)


def _twins(name, **kwargs):
    net = create_model(name, **kwargs)
    twin = copy.deepcopy(net)
    options = {"schedule": "cosine", "total_steps": 20}
    return LocalTrainer(net, **options), LocalTrainer(twin, **options)


def test_profile_tinycnn_costs():
    trainer, _ = _twins("deeperforward_tinycnn", width_multiplier=0.1)
    x, y = _images()
    net = trainer.network
    costs = profile_layers(trainer, x, y, steps=2, warmup=1)
    assert isinstance(costs, LayerCosts) and len(costs) == len(net) == 4
    assert all(isinstance(s, float) and s > 0 for s in costs.seconds)
    assert all(isinstance(b, int) and b > 0 for b in costs.peak_bytes)
    # no shortcuts: a boundary sends the layer's features only; width 0.1 gives 10/20/40/40 channels
    expected = _feature_bytes(net, x, y)
    assert list(costs.output_bytes) == expected
    with torch.no_grad():
        channels = [out.features.shape[1] for _, out in net.iter_layers(x)]
    assert channels == [10, 20, 40, 40]
    assert expected[0] == 8 * 10 * 32 * 32 * F32  # the first layer keeps the 32 x 32 resolution
    # the hooks are gone
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in net.layers)
    assert balance_stages(costs.seconds, 2) in {(0, k) for k in range(1, 4)}


def test_profile_restores_everything_and_training_continues_identically():
    trainer, twin = _twins("deeperforward_tinycnn", width_multiplier=0.1)
    x0, y0 = _images(seed=0)
    x1, y1 = _images(seed=1)
    # one real step first, so that there are optimizer moments and a scheduled lr to restore
    for t in (trainer, twin):
        torch.manual_seed(1)
        t.train_step(x0, y0)
    _assert_same_training_state(trainer, twin)

    torch.manual_seed(2)
    rng = torch.get_rng_state()
    trainer.network.eval()  # the mode is restored too
    profile_layers(trainer, x1, y1, steps=2, warmup=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not trainer.network.training
    trainer.network.train()
    _assert_same_training_state(trainer, twin)

    # the next step (dropout draws from the restored RNG) equals the unprofiled twin's
    res = trainer.train_step(x1, y1)
    torch.manual_seed(2)
    res_twin = twin.train_step(x1, y1)
    assert torch.equal(res.losses, res_twin.losses)
    _assert_same_training_state(trainer, twin)


def test_profile_restores_after_a_failed_step():
    trainer, twin = _twins("deeperforward_tinycnn", width_multiplier=0.1)
    x, y = _images()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        profile_layers(trainer, bad, y, steps=1, warmup=0)
    _assert_same_training_state(trainer, twin)
    assert all(not layer._forward_pre_hooks for layer in trainer.network.layers)


def test_profile_counts_crossing_shortcuts():
    trainer, _ = _twins("deeperforward_resnet17", width_multiplier=0.1)
    net = trainer.network
    x, y = _images()
    costs = profile_layers(trainer, x, y, steps=1, warmup=0)
    assert len(costs) == 17 and all(s > 0 for s in costs.seconds)
    feats = _feature_bytes(net, x, y)
    # shortcuts 2 <- 0, 4 <- 2, ...: a cut after layer 1 also sends layer 0's features (for layer 2), a cut after
    # layer 3 layer 2's (for layer 4); a cut after layer 2 sends layer 2's features twice (its input and shortcut)
    assert net.shortcuts[2] == 0 and net.shortcuts[4] == 2
    assert costs.output_bytes[1] == feats[1] + feats[0]
    assert costs.output_bytes[2] == 2 * feats[2]
    # layers 2 and 3: 10 channels at 32 x 32 for a batch of 8
    assert costs.output_bytes[3] == 2 * 8 * 10 * 32 * 32 * F32
    assert costs.output_bytes[16] == feats[16]  # after the last layer nothing crosses
    expected = [feats[i] + sum(feats[s] for s in net.crossing_shortcuts(i)) for i in range(17)]
    assert list(costs.output_bytes) == expected


@pytest.mark.parametrize("negatives", ["random", "adaptive"])
def test_profile_pos_neg_network_with_head(negatives):
    # Positive/negative data doubles the batch through the layers; adaptive negatives and the head run extra
    # no-grad passes, which must not move the stamps. A sampler's own generator is restored too.
    kwargs = {"hidden": (32, 32, 32), "negatives": negatives, "head": True}
    trainer, twin = _twins("hinton_mlp", **kwargs)
    if negatives == "random":
        trainer.network.objective.negatives.generator = torch.Generator().manual_seed(5)
        twin.network.objective.negatives.generator = torch.Generator().manual_seed(5)
    x, y = _images(channels=1)
    costs = profile_layers(trainer, x, y, steps=2, warmup=1)
    assert list(costs.output_bytes) == [2 * 8 * 32 * F32] * 3
    assert all(s > 0 for s in costs.seconds) and all(b > 0 for b in costs.peak_bytes)
    _assert_same_training_state(trainer, twin)
    torch.manual_seed(3)
    res = trainer.train_step(x, y)
    torch.manual_seed(3)
    res_twin = twin.train_step(x, y)
    assert torch.equal(res.losses, res_twin.losses) and torch.equal(res.head[0], res_twin.head[0])
    _assert_same_training_state(trainer, twin)


def test_profile_argument_errors():
    trainer, _ = _twins("deeperforward_tinycnn", width_multiplier=0.1)
    x, y = _images()
    with pytest.raises(TypeError, match="trainer must be an ffkit LocalTrainer"):
        profile_layers(trainer.network, x, y)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        profile_layers(trainer, x, y, steps=0)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        profile_layers(trainer, x, y, warmup=-1)
    with pytest.raises(TypeError, match="steps must be an int"):
        profile_layers(trainer, x, y, steps=2.0)


def test_profile_stamps_only_the_training_pass(monkeypatch):
    # A clock that ticks once per reading. Layer i's forward and backward span one tick (stamp i to stamp i + 1);
    # the optimizer steps of layers 0 and 1 run after the last layer's backward, each read twice (one tick, moved
    # back to its layer), so the last layer keeps end - stamp 2 - 2 = 3 ticks: (2, 2, 3) unless a no-grad pass
    # (adaptive negatives before the layers, the head's neutral-label pass after them) moved a stamp.
    import types

    import ffkit.train.balance as balance

    ticks = itertools.count()
    monkeypatch.setattr(balance, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    trainer, _ = _twins("hinton_mlp", hidden=(32, 32, 32), negatives="adaptive", head=True)
    x, y = _images(channels=1)
    costs = profile_layers(trainer, x, y, steps=3, warmup=1)
    assert costs.seconds == (2.0, 2.0, 3.0)
    # layer 0's linear map saves its [2B, 1024] input: the peak is at least that
    assert costs.peak_bytes[0] >= 2 * 8 * 1024 * F32
