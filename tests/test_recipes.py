"""Every named recipe builds its model and trainer and runs training steps; flags override recipe fields."""

import inspect
import json
import math

import pytest
import torch

from ffkit.cli import main
from ffkit.data import DEBIAN_FASHION_MNIST_DIR, dataset_info
from ffkit.models import get_model_builder, list_models
from ffkit.recipes import RECIPES, Recipe, build_model, build_trainer, get_recipe, list_recipes, register_recipe
from ffkit.train import BackpropTrainer, ChapterTrainer, LocalTrainer
from ffkit.train.schedules import make_schedule

SMALL = {"width_multiplier": 0.05, "hidden": (32, 32, 32)}


def _small_overrides(model: str) -> dict:
    params = inspect.signature(get_model_builder(model)).parameters
    return {k: v for k, v in SMALL.items() if k in params}


def test_paper_recipes_exist():
    names = set(list_recipes())
    for required in ("deeperforward-resnet17-fmnist", "trifecta-deep-cifar10", "dtg-vgg8-cifar10",
                     "pff-mlp-mnist-adaptiveneg", "pon-mlp-mnist", "bp-deepsup-tinycnn-fmnist"):
        assert required in names
    assert all(RECIPES[n].model in list_models() for n in names), "a recipe names an unregistered model"


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_runs_training_steps(name):
    torch.manual_seed(0)
    recipe = get_recipe(name)
    info = dataset_info(recipe.dataset)
    net = build_model(recipe, num_classes=info.num_classes, in_channels=info.in_channels,
                      **_small_overrides(recipe.model))
    trainer = build_trainer(recipe, net, steps_per_epoch=10)
    expected = {"backprop": BackpropTrainer, "chapters": ChapterTrainer}.get(recipe.trainer, LocalTrainer)
    if recipe.model.startswith("bp_"):
        expected = BackpropTrainer
    assert type(trainer) is expected
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(recipe.lr)
    if isinstance(trainer, LocalTrainer):
        assert trainer.overlap == recipe.overlap
    size = net.input_size[0] if getattr(net, "input_size", None) else 32  # loeweX's MLP takes 28x28
    x = torch.rand(4, info.in_channels, size, size)
    y = torch.arange(4) % info.num_classes
    before = [p.detach().clone() for p in net.parameters()]
    if isinstance(trainer, ChapterTrainer):  # sequential chapters: one epoch of two batches
        record = trainer.train_epoch([(x, y, torch.arange(4)), (x, y, torch.arange(4))])
        assert all(math.isfinite(v) for v in record["train_loss"])
    else:
        for _ in range(2):
            res = trainer.train_step(x, y, index=torch.arange(4))  # FixedNEG needs sample indices
            assert torch.isfinite(res.losses).all()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_recipe_registry_errors():
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_recipe(get_recipe("pon-mlp-mnist"))
    bp = Recipe(name="x", model="bp_vgg8", dataset="cifar10", epochs=1, trainer="local")
    net = build_model(bp, num_classes=10, in_channels=3, width_multiplier=0.05)
    with pytest.raises(ValueError, match="single-head backprop"):
        build_trainer(bp, net, steps_per_epoch=1)


def test_piecewise_and_cooldown_schedules():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_schedule(opt, "piecewise", 10, 0.0, milestones=((2, 0.5), (4, 0.1)))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.1, 0.1])
    opt = torch.optim.SGD([p], lr=0.01)
    sched = make_schedule(opt, "cooldown", 10, 0.0)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # Pipeline-FF's release: min(1, 2 max(T - 1 - t, 1) / T) with T = 10: constant for ticks 0..4, then 0.8, 0.6,
    # 0.4, 0.2, and the last ticks keep 0.2
    assert lrs == pytest.approx([0.01] * 5 + [0.008, 0.006, 0.004, 0.002, 0.002, 0.002])
    # the release's factors over 100 epochs (printed by its trainer): epochs 49-52 -> 1, 1, 0.98, 0.96; 98-100 ->
    # 0.04, 0.02, 0.02 (1-based)
    factor = make_schedule(torch.optim.SGD([p], lr=1.0), "cooldown", 100, 0.0).lr_lambdas[0]
    assert [factor(e - 1) for e in (49, 50, 51, 52, 98, 99, 100)] == pytest.approx([1, 1, 0.98, 0.96, 0.04, 0.02, 0.02])


def test_epoch_interval_cosine_equals_cosine_annealing_stepped_per_epoch():
    # DeeperForward's release: CosineAnnealingLR(T_max=epochs, eta_min=0.008) stepped once per epoch. By hand, with
    # 3 epochs: epoch 0 at 0.08, epoch 1 at 0.008 + 0.072 * (1 + cos(pi/3)) / 2 = 0.062, epoch 2 at
    # 0.008 + 0.072 * (1 + cos(2 pi/3)) / 2 = 0.026.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.08)
    sched = make_schedule(opt, "cosine", 3 * 4, 0.008, every=4)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.08)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=3, eta_min=0.008)
    lrs, ref_lrs = [], []
    for step in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        ref_lrs.append(ref_opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if step % 4 == 3:  # the end of an epoch
            ref_opt.step()
            ref.step()
    assert lrs == pytest.approx([0.08] * 4 + [0.062] * 4 + [0.026] * 4)
    assert lrs == pytest.approx(ref_lrs)
    with pytest.raises(ValueError, match=r"every must be an int >= 1 \(steps per schedule update\)"):
        make_schedule(opt, "cosine", 12, 0.008, every=0)


@pytest.mark.parametrize("name", [n for n in list_recipes() if n.startswith("deeperforward-")])
def test_deeperforward_recipes_use_the_released_optimizers(name):
    # main.py and the model classes of the release: AdamW per layer (TinyCNN with AdamW's default weight decay 0.01,
    # the ResNets with 5e-4), CNN14 plain Adam without weight decay; lr 0.08 -> 0.008 by a per-epoch cosine.
    recipe = get_recipe(name)
    net = build_model(recipe, num_classes=dataset_info(recipe.dataset).num_classes,
                      in_channels=dataset_info(recipe.dataset).in_channels, width_multiplier=0.05)
    trainer = build_trainer(recipe, net, steps_per_epoch=7)
    opt = trainer.optimizers[0]
    model = recipe.model.removeprefix("deeperforward_")
    expected_cls, expected_wd = {"tinycnn": (torch.optim.AdamW, 0.01), "cnn14": (torch.optim.Adam, 0.0)}.get(
        model, (torch.optim.AdamW, 5e-4))
    assert type(opt) is expected_cls
    assert opt.param_groups[0]["weight_decay"] == expected_wd
    assert (recipe.lr, recipe.final_lr, recipe.batch_size, recipe.epochs) == (0.08, 0.008, 128, 150)
    assert recipe.schedule == "cosine" and recipe.schedule_interval == "epoch"
    factor = trainer.schedulers[0].lr_lambdas[0]
    assert [factor(s) for s in (0, 6)] == [1.0, 1.0] and factor(7) < 1.0  # constant within an epoch
    assert recipe.holdout


def test_only_deeperforward_holds_out_a_split_for_sip():
    held = {n for n in list_recipes() if get_recipe(n).holdout}
    assert held == {n for n in list_recipes() if n.startswith("deeperforward-")}


def test_trifecta_deep_milestones_become_steps():
    recipe = get_recipe("trifecta-deep-cifar10")
    net = build_model(recipe, num_classes=10, in_channels=3, width_multiplier=0.05)
    trainer = build_trainer(recipe, net, steps_per_epoch=3)
    factor = trainer.schedulers[0].lr_lambdas[0]
    assert [factor(s) for s in (0, 599, 600, 1199, 1200)] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.1])


def test_recipes_command_lists_them(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "trifecta-deep-cifar10" in out and "83.51" in out


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_train_with_recipe_and_overrides(tmp_path, capsys):
    args = ["train", "--recipe", "deeperforward-tinycnn-fmnist", "--epochs", "1", "--limit", "256",
            "--eval-limit", "128", "--width-multiplier", "0.1", "--data-dir", str(tmp_path / "d"),
            "--out", str(tmp_path / "run"), "--no-progress", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["recipe"] == "deeperforward-tinycnn-fmnist" and summary["epochs"] == 1
    assert "Published figure for this recipe: 91.83" in out
    meta = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(meta) == 1
    import ffkit

    payload = ffkit.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert payload["metadata"]["lr"] == 0.08 and payload["metadata"]["epochs"] == 1


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_cli_backprop_deepsup_on_an_ff_model(tmp_path, capsys):
    args = ["train", "--model", "deeperforward_tinycnn", "--trainer", "backprop", "--lr", "0.001", "--limit", "128",
            "--eval-limit", "128", "--width-multiplier", "0.1", "--data-dir", str(tmp_path / "d"),
            "--out", str(tmp_path / "run"), "--no-progress", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["trainer"] == "backprop"
    assert main(["train", "--model", "bp_vgg8", "--trainer", "local", "--data-dir", str(tmp_path / "d")]) == 2
    assert "single-head backprop" in capsys.readouterr().err
    assert main(["train", "--trainer", "backprop", "--overlap", "--data-dir", str(tmp_path / "d")]) == 2
    assert "conflicts" in capsys.readouterr().err


def test_layer_windows_freeze_layers_outside_their_epochs():
    # CwComp's "ILT": layer l trains in the epochs [0, e_l) only. With 2 steps per epoch and windows (0, 1), (0, 2),
    # layer 0 trains at steps 0-1 and layer 1 at steps 0-3; outside its window a layer keeps its weights while its
    # BatchNorm still runs in training mode.
    recipe = get_recipe("cwcomp-cnn-fmnist")
    assert recipe.layer_epochs == ((0, 10), (0, 15), (0, 19), (0, 23))  # Models.py start_end, F-MNIST, 'Acc'
    small = Recipe(**{**recipe.to_dict(), "name": "w", "layer_epochs": ((0, 1), (0, 2), (0, 2), (0, 2))})
    net = build_model(small, num_classes=10, in_channels=1, width_multiplier=0.5)
    trainer = build_trainer(small, net, steps_per_epoch=2)
    assert trainer.layer_steps == ((0, 2), (0, 4), (0, 4), (0, 4))
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    for _ in range(2):
        trainer.train_step(x, y)
    w0 = net.layers[0].conv.weight.detach().clone()
    w1 = net.layers[1].conv.weight.detach().clone()
    stats = net.layers[0].norm.running_mean.clone()
    res = trainer.train_step(x, y)  # step 2: layer 0 is outside its window
    assert torch.equal(net.layers[0].conv.weight, w0) and not torch.equal(net.layers[1].conv.weight, w1)
    assert not torch.equal(net.layers[0].norm.running_mean, stats)  # it still ran in training mode
    assert torch.isfinite(res.losses).all() and res.losses.shape == (4,)
    with pytest.raises(ValueError, match="one window per layer"):
        LocalTrainer(net, total_steps=1, layer_steps=((0, 1),))
    with pytest.raises(ValueError, match="conflicts with overlap"):
        LocalTrainer(net, total_steps=1, layer_steps=(None,) * 4, overlap=True)
    with pytest.raises(ValueError, match=r"layer_steps\[1\]"):
        LocalTrainer(net, total_steps=1, layer_steps=(None, (3, 1), None, None))


def test_trifecta_recipes_drop_the_last_batch_as_the_release():
    assert all(get_recipe(n).drop_last for n in list_recipes() if n.startswith("trifecta-") and "fcn" not in n)


def test_linear_cooldown_is_loewex_form():
    # loeweX's get_linear_cooldown_lr for 0-based epoch t of E = 10: lr until t = 5 (t > E // 2 is false), then
    # lr * 2 (1 + 10 - t) / 10: t = 6 -> 1.0, 7 -> 0.8, 8 -> 0.6, 9 -> 0.4
    p = torch.nn.Parameter(torch.zeros(1))
    factor = make_schedule(torch.optim.SGD([p], lr=1.0), "linear-cooldown", 10, 0.0).lr_lambdas[0]
    assert [factor(t) for t in range(10)] == pytest.approx([1, 1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4])
    # towards final_lr: with final 0.1 of lr, t = 9 -> 0.1 + 0.9 * 0.4 = 0.46
    factor = make_schedule(torch.optim.SGD([p], lr=1.0), "linear-cooldown", 10, 0.1).lr_lambdas[0]
    assert factor(9) == pytest.approx(0.46)


def test_recipe_performance_fields_reach_the_trainer_and_flags_override_them():
    recipe = Recipe(name="p", model="deeperforward_tinycnn", dataset="fashion-mnist", epochs=1, channels_last=True,
                    amp=True)
    net = build_model(recipe, num_classes=10, in_channels=1, width_multiplier=0.1)
    trainer = build_trainer(recipe, net, steps_per_epoch=1)
    assert (trainer.channels_last, trainer.amp) == (True, True)
    trainer = build_trainer(recipe, net, steps_per_epoch=1, amp=False)  # what --no-amp passes
    assert (trainer.channels_last, trainer.amp) == (True, False)


def test_no_recipe_quotes_another_datasets_figure():
    """A recipe's published figure is for its own dataset: a reference that gives a figure names no other dataset
    (the DTG-FF F-MNIST and CIFAR-100 rows used to quote the CIFAR-10 logit-sum figure). A reference without a
    figure ("no published Fashion-MNIST figure ...") may name others for context."""
    import re

    from ffkit.recipes import get_recipe, list_recipes

    names = {"cifar100": r"CIFAR-?100", "cifar10": r"CIFAR-?10(?!0)", "fashion-mnist": r"F(ashion)?-?MNIST",
             "mnist": r"(?<![F-])(?<!Fashion-)\bMNIST", "svhn": r"SVHN"}
    for name in list_recipes():
        recipe = get_recipe(name)
        if not re.match(r"\s*\d", recipe.reference or ""):
            continue
        for dataset, pattern in names.items():
            if dataset != recipe.dataset and re.search(pattern, recipe.reference or "", flags=re.I):
                raise AssertionError(f"{name} ({recipe.dataset}) quotes {dataset}: {recipe.reference}")
