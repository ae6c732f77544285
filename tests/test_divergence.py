"""Divergence and interruption inside an epoch: a NaN/inf loss or goodness stops training naming the layer, the epoch
and the step with no part of the bad step applied (and ``fit`` saves that last good state), or is skipped and
counted; checkpoints written inside an epoch resume to exactly the uninterrupted run; same seed, same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit.models import create_model
from ffkit.train import load_checkpoint


def _trifecta(seed: int = 0) -> ffkit.FFNetwork:
    """A small network with BatchNorm statistics (buffers a step's forward changes), trained on positive and
    negative data whose negative labels are chosen without random draws (the hardest wrong class)."""
    torch.manual_seed(seed)
    return create_model("trifecta_fcn", num_classes=4, in_channels=1, width_multiplier=0.01, negatives="adaptive")


def _cw(seed: int = 0, dropout: float = 0.0) -> ffkit.FFNetwork:
    torch.manual_seed(seed)
    return create_model("deeperforward_tinycnn", num_classes=4, in_channels=1, width_multiplier=0.1,
                        dropout=dropout)


def _data(n: int = 48, size: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.arange(n) % 4
    x[torch.arange(n), 0, y, y] += 2.0
    return TensorDataset(x, y)


def _snapshot(trainer: ffkit.LocalTrainer) -> dict:
    return copy.deepcopy({"net": trainer.network.state_dict(),
                          "opt": [o.state_dict() if o else None for o in trainer.optimizers]})


def _assert_same(a: dict, b: dict) -> None:
    for k in a["net"]:
        assert torch.equal(a["net"][k], b["net"][k]), k
    for oa, ob in zip(a["opt"], b["opt"]):
        if oa is None:
            continue
        assert oa["state"].keys() == ob["state"].keys()
        for i in oa["state"]:
            for key in oa["state"][i]:
                assert torch.equal(oa["state"][i][key], ob["state"][i][key])


def test_a_nan_loss_stops_with_no_part_of_the_step_applied():
    net = _trifecta()
    assert any("running_mean" in k for k, _ in net.named_buffers())
    trainer = ffkit.LocalTrainer(net, lr=0.01, total_steps=4)
    x, y = _data(8)[:]
    trainer.train_step(x, y)
    before = _snapshot(trainer)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    expected = r"layer 1 of \d+ \(index 0, TrifectaLinear\).*epoch 1, step 2"
    with pytest.raises(ffkit.DivergenceError, match=expected) as e:
        trainer.train_step(bad, y)
    assert (e.value.layer, e.value.epoch, e.value.step) == (0, 1, 2)
    _assert_same(before, _snapshot(trainer))  # weights, optimizer moments and BatchNorm statistics
    assert trainer.step_count == 1
    assert all(p.grad is None for p in net.parameters())
    trainer.train_step(x, y)  # training goes on from the last good state
    assert trainer.step_count == 2


def test_an_infinite_goodness_with_a_finite_loss_is_caught(monkeypatch):
    net = _cw()
    trainer = ffkit.LocalTrainer(net, lr=0.01, total_steps=4)

    def poison(module, args, out):  # one infinite class score in layer 2
        scores = out.scores.clone()
        scores[0, 1] = float("inf")
        return out._replace(scores=scores)

    net.layers[1].register_forward_hook(poison)
    loss_of = net.objective.layer_loss

    def finite_loss(out, batch):  # the loss ignores the infinite score
        return loss_of(out._replace(scores=torch.nan_to_num(out.scores, posinf=0.0)), batch)

    monkeypatch.setattr(net.objective, "layer_loss", finite_loss)
    x, y = _data(8)[:]
    before = _snapshot(trainer)
    with pytest.raises(ffkit.DivergenceError, match=r"layer 2 of 4 .*non-finite goodness at epoch 1, step 1"):
        trainer.train_step(x, y)
    _assert_same(before, _snapshot(trainer))


def test_skip_mode_drops_the_batch_and_counts_it():
    data = _data(48)
    x, y = data[:]
    poisoned = x.clone()
    poisoned[20, 0, 0, 0] = float("inf")  # batch 2 of 3
    loader = DataLoader(TensorDataset(poisoned, y), batch_size=16)
    a = ffkit.LocalTrainer(_trifecta(), lr=0.01, schedule="constant", on_divergence="skip")
    record = a.train_epoch(loader)
    assert record["skipped_batches"] == 1 and record["train_images"] == 32
    assert a.step_count == 3  # the schedule keeps counting the data's batches
    # the same as training on batches 1 and 3 only
    b = ffkit.LocalTrainer(_trifecta(), lr=0.01, schedule="constant")
    b.train_step(x[:16], y[:16])
    b.train_step(x[32:], y[32:])
    _assert_same(_snapshot(b), _snapshot(a))
    with pytest.raises(ValueError, match="on_divergence must be one of"):
        ffkit.LocalTrainer(_trifecta(), on_divergence="ignore", schedule="constant")


def test_every_batch_skipped_is_an_error():
    x, y = _data(16)[:]
    x[:] = float("nan")
    trainer = ffkit.LocalTrainer(_trifecta(), lr=0.01, schedule="constant", on_divergence="skip")
    with pytest.raises(ffkit.DivergenceError, match="every one of the 2 batches of epoch 1"):
        trainer.train_epoch(DataLoader(TensorDataset(x, y), batch_size=8))


def _poison_at(trainer: ffkit.LocalTrainer, step: int) -> None:
    """Make the batch of training step ``step`` (1-based) non-finite."""
    real = trainer.train_step

    def train_step(x, y, index=None):
        if trainer.step_count + 1 == step:
            x = x.clone()
            x[0] = float("nan")
        return real(x, y, index)

    trainer.train_step = train_step  # type: ignore[method-assign]


def test_fit_saves_the_last_good_state_and_a_resume_can_skip_the_bad_batch(tmp_path):
    loader = DataLoader(_data(48), batch_size=16)  # 3 steps per epoch, no shuffling
    a = ffkit.LocalTrainer(_trifecta(), lr=0.01, total_steps=6)
    _poison_at(a, 5)  # epoch 2, its second batch
    with pytest.raises(ffkit.DivergenceError, match=r"epoch 2, step 5.*last good state \(before the last step "
                       r"taken.*checkpoint\.pt") as e:
        a.fit(loader, epochs=2, out_dir=tmp_path, log=None)
    assert e.value.checkpoint == tmp_path / "checkpoint.pt" and e.value.layer == 0
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["position"]["epoch"] == 2 and payload["position"]["batches"] == 1
    assert payload["trainer"]["step_count"] == 4

    # The state before step 4, the last one taken (step 5's input state came out of it): three good steps. Step 4's
    # batch is not trained again; the schedule stays at the data position.
    ref = ffkit.LocalTrainer(_trifecta(), lr=0.01, total_steps=6)
    ref.fit(loader, epochs=1, log=None)
    _assert_same(_snapshot(ref), {"net": payload["network"], "opt": payload["trainer"]["optimizers"]})

    c = ffkit.LocalTrainer(_trifecta(seed=9), lr=0.01, total_steps=6, on_divergence="skip")
    c.resume(tmp_path / "checkpoint.pt")
    _poison_at(c, 5)
    history = c.fit(loader, epochs=2, out_dir=tmp_path, log=None)
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["skipped_batches"] == 1 and history[1]["train_images"] == 32


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpoints_inside_an_epoch_resume_to_the_uninterrupted_weights(tmp_path, dropout):
    data = _data(48)

    def loader():
        return DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator())  # 6 steps per epoch

    ref = ffkit.LocalTrainer(_cw(dropout=dropout), lr=0.01, total_steps=12)
    ref.fit(loader(), epochs=2, log=None, seed=5)
    # interrupted before step `stop + 1` -> the step count of the last checkpoint (None: no checkpoint yet)
    stops = {1: None, 3: 2, 6: 6, 7: 6, 11: 10}
    for stop, saved in stops.items():
        out = tmp_path / f"stop{stop}"
        a = ffkit.LocalTrainer(_cw(dropout=dropout), lr=0.01, total_steps=12)
        real = a.train_step

        def train_step(x, y, index=None, real=real, a=a, stop=stop):
            if a.step_count == stop:
                raise _Interrupt
            return real(x, y, index)

        a.train_step = train_step  # type: ignore[method-assign]
        with pytest.raises(_Interrupt):
            a.fit(loader(), epochs=2, out_dir=out, log=None, seed=5, checkpoint_every=2)
        torch.manual_seed(1234)  # a new process: other random state until the checkpoint restores it
        if saved is None:  # killed before its first checkpoint: the run starts again
            assert not out.exists()
            b = ffkit.LocalTrainer(_cw(dropout=dropout), lr=0.01, total_steps=12)
        else:
            b = ffkit.LocalTrainer(_cw(seed=7, dropout=dropout), lr=0.01, total_steps=12)
            b.resume(out / "checkpoint.pt")
            assert b.step_count == saved
        b.fit(loader(), epochs=2, out_dir=out, log=None, seed=5, checkpoint_every=2)
        _assert_same(_snapshot(ref), _snapshot(b))
        assert [r["train_loss"] for r in b.history] == [r["train_loss"] for r in ref.history]
        assert [r["train_images"] for r in b.history] == [48, 48]


def test_same_seed_same_data_same_weights():
    def run() -> dict:
        t = ffkit.LocalTrainer(_cw(dropout=0.2), lr=0.01, total_steps=6)
        t.fit(DataLoader(_data(48), batch_size=16, shuffle=True, generator=torch.Generator()), epochs=2, log=None,
              seed=3)
        return _snapshot(t)

    a, b = run(), run()
    _assert_same(a, b)
    c = ffkit.LocalTrainer(_cw(seed=1, dropout=0.2), lr=0.01, total_steps=6)
    c.fit(DataLoader(_data(48), batch_size=16, shuffle=True, generator=torch.Generator()), epochs=2, log=None, seed=3)
    other = _snapshot(c)["net"]
    assert any(not torch.equal(other[k], a["net"][k]) for k in a["net"])  # another seed, other weights


def test_checkpoint_every_arguments(tmp_path):
    trainer = ffkit.LocalTrainer(_cw(), lr=0.01, schedule="constant")
    loader = DataLoader(_data(16), batch_size=8)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=r"checkpoint_every must be an int >= 1 \(batches\)"):
            trainer.fit(loader, epochs=1, out_dir=tmp_path, checkpoint_every=bad, log=None)
    for bad in (1.5, True):
        with pytest.raises(TypeError, match=r"checkpoint_every must be an int \(batches\)"):
            trainer.fit(loader, epochs=1, out_dir=tmp_path, checkpoint_every=bad, log=None)


def test_a_position_past_the_data_is_a_clear_error(tmp_path):
    a = ffkit.LocalTrainer(_cw(), lr=0.01, schedule="constant")
    real = a.train_step

    def train_step(x, y, index=None):
        if a.step_count == 4:
            raise _Interrupt
        return real(x, y, index)

    a.train_step = train_step  # type: ignore[method-assign]
    with pytest.raises(_Interrupt):
        a.fit(DataLoader(_data(48), batch_size=8), epochs=1, out_dir=tmp_path, checkpoint_every=2, log=None)
    b = ffkit.LocalTrainer(_cw(), lr=0.01, schedule="constant")
    b.resume(tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="stopped after batch 4 of epoch 1, but the training data has only 2"):
        b.fit(DataLoader(_data(16), batch_size=8), epochs=1, log=None)


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_a_neutral_pass_head_is_checked_after_the_layers_update(monkeypatch, action):
    """Hinton's MLP with a softmax head reads a neutral-label pass through the updated layers: a non-finite head
    loss stops (naming the head) or skips the head's own update; the layers keep theirs."""
    torch.manual_seed(0)
    net = create_model("hinton_mlp", head=True, hidden=(32, 32))
    trainer = ffkit.LocalTrainer(net, lr=0.01, schedule="constant", on_divergence=action)
    x, y = torch.rand(8, 1, 32, 32), torch.arange(8) % 10
    trainer.train_step(x, y)
    before = _snapshot(trainer)["net"]
    monkeypatch.setattr(net.head, "loss", lambda logits, target: logits.sum() * float("nan"))
    if action == "stop":
        with pytest.raises(ffkit.DivergenceError, match="classifier head produced a non-finite loss") as err:
            trainer.train_step(x, y)
        assert err.value.layer is None and err.value.step == 2
    else:
        assert trainer.train_step(x, y).skipped
    after = net.state_dict()
    head_keys = [k for k in before if k.startswith("head.")]
    assert head_keys and all(torch.equal(before[k], after[k]) for k in head_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("layers."))


def test_backprop_divergence_leaves_the_batchnorm_statistics_as_they_were(tmp_path):
    torch.manual_seed(0)
    net = create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
    trainer = ffkit.BackpropTrainer(net, lr=0.01, schedule="constant")
    data = _data(16)
    bad = data.tensors[0].clone()
    bad[8:] = float("nan")
    with pytest.raises(ffkit.DivergenceError, match="saved in") as err:
        trainer.fit(DataLoader(TensorDataset(bad, data.tensors[1]), batch_size=8), epochs=1, out_dir=tmp_path,
                    log=None)
    assert (err.value.epoch, err.value.step) == (1, 2) and "on_divergence" not in str(err.value)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["network"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point())


def test_the_multi_process_engines_refuse_skip():
    net = _cw()
    with pytest.raises(ValueError, match="PipelineTrainer supports on_divergence='stop' only"):
        ffkit.PipelineTrainer(net, stages=2, on_divergence="skip")
    with pytest.raises(ValueError, match="ChapterTrainer supports on_divergence='stop' only"):
        ffkit.train.ChapterTrainer(net, chapter_batches=1, on_divergence="skip")


def _sgd_cw(lr: float, seed: int = 0) -> ffkit.LocalTrainer:
    return ffkit.LocalTrainer(_cw(seed), lr=lr, optimizer="sgd", schedule="constant")


@pytest.mark.parametrize("lr", [1e20, 1e38])
def test_a_step_that_overflows_the_weights_is_undone_before_fit_saves(tmp_path, lr):
    """Finite gradients times an lr far too high: at 1e38 the weights overflow to infinity, at 1e20 they stay finite
    but no later forward is. Either way the state saved is the one before the step that did it, and a resume with a
    sane lr trains on (before: the state after that step was saved, or nothing was)."""
    loader = DataLoader(_data(64), batch_size=16)
    runs = _sgd_cw(lr)
    with pytest.raises(ffkit.DivergenceError, match=r"layer 1 of 4 .* holds non-finite weights after its previous "
                       r"step \(whose gradients were finite\).*before the last step taken") as err:
        runs.fit(loader, epochs=1, out_dir=tmp_path, log=None)
    step = err.value.step
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["trainer"]["step_count"] == step - 1 and saved["position"]["batches"] == step - 1

    ref = _sgd_cw(lr)  # the steps before the one undone
    batches = iter(loader)
    for _ in range(step - 2):
        ref.train_step(*next(batches))
    for k, v in ref.network.state_dict().items():
        assert torch.equal(saved["network"][k], v), k
    ref.train_step(*next(batches))  # the undone step: what was saved before, which no lr can continue from
    ref.optimizers[0].param_groups[0]["lr"] = 0.01
    with pytest.raises(ffkit.DivergenceError):
        ref.train_step(*next(batches))

    resumed = _sgd_cw(0.01, seed=5)
    resumed.resume(tmp_path / "checkpoint.pt")
    resumed.fit(loader, epochs=2, out_dir=tmp_path, log=None)
    assert all(torch.isfinite(v).all() for v in resumed.network.state_dict().values() if v.is_floating_point())


def test_without_fit_the_overflowed_weights_are_named_and_not_stepped():
    trainer = _sgd_cw(1e38)
    x, y = _data(32)[:]
    trainer.train_step(x[:16], y[:16])
    before = _snapshot(trainer)
    with pytest.raises(ffkit.DivergenceError, match="layer 1 of 4 .* holds non-finite weights") as err:
        trainer.train_step(x[16:], y[16:])
    assert (err.value.layer, err.value.step) == (0, 2)
    _assert_same(_snapshot(trainer), before)
    assert trainer.step_undo is None  # fit keeps the copies only while it can save them


def test_backprop_checks_gradients_and_overflowed_weights(tmp_path):
    data = DataLoader(_data(32), batch_size=8)
    torch.manual_seed(0)
    net = create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
    init = copy.deepcopy(net.state_dict())
    trainer = ffkit.BackpropTrainer(net, lr=1e38, optimizer="sgd", schedule="constant")
    with pytest.raises(ffkit.DivergenceError, match=r"non-finite weights after the previous step .*step 2.*"
                       r"before the last step taken"):
        trainer.fit(data, epochs=1, out_dir=tmp_path, log=None)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["network"]
    assert all(torch.equal(saved[k], v) for k, v in init.items())

    trainer = ffkit.BackpropTrainer(net, lr=0.01, schedule="constant")
    net.load_state_dict(init)
    name, weight = next(net.named_parameters())
    handle = weight.register_hook(lambda g: g * float("nan"))
    x, y = next(iter(data))
    with pytest.raises(ffkit.DivergenceError, match="a gradient became non-finite behind a finite loss at epoch 1, "
                                                     "step 1"):
        trainer.train_step(x, y)
    handle.remove()
    assert torch.equal(weight, init[name]) and weight.grad is None


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_step_undo_puts_back_the_latest_step_only(optimizer):
    from ffkit.train.undo import StepUndo

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)
    make = {"adam": lambda p: torch.optim.Adam(p, lr=0.1),
            "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)}[optimizer]
    opt_a, opt_b = make(a.parameters()), make(b.parameters())
    undo = StepUndo()
    x = torch.randn(4, 3)

    def step(tag: int, opts: list) -> list:
        saved = [(buf, buf.clone()) for buf in b.buffers()]
        b(a(x)).square().sum().backward()
        undo.before_step(opts, tag, saved)
        for o in opts:
            o.step()
            o.zero_grad()
        return saved

    step(0, [opt_a, opt_b])
    step(1, [opt_b])  # a's training ended: its last step (tag 0) is not the latest
    after_a = copy.deepcopy((a.state_dict(), opt_a.state_dict()))
    before_b = copy.deepcopy((b.state_dict(), opt_b.state_dict()))
    step(2, [opt_b])
    assert not torch.equal(b.weight, before_b[0]["weight"])
    assert undo.restore([opt_a, opt_b]) is True
    for k, v in before_b[0].items():
        assert torch.equal(b.state_dict()[k], v), k  # weights and running statistics
    assert str(opt_b.state_dict()["state"]) == str(before_b[1]["state"])
    assert str((a.state_dict(), opt_a.state_dict())) == str(after_a)
    assert undo.restore([opt_a, opt_b]) is False  # one step back only

    fresh = make(torch.nn.Linear(3, 2).parameters())  # a first step makes the state; undone, the state goes
    for q in fresh.param_groups[0]["params"]:
        q.grad = torch.ones_like(q)
    undo.before_step([fresh], 0, [])
    fresh.step()
    assert len(fresh.state) == 2
    undo.restore([fresh])
    assert len(fresh.state) == 0
