"""ChapterTrainer (Pipeline-FF's all-layers variant and its sequential chapter loop): the loop it defines, exactly,
with the softmax layer trained after the chapter's layers; negatives drawn once per chapter (adaptive ones with the
network before the chapter, random in the first); two processes that pass layers from chapter to chapter give the same
weights; bad arguments and a lost rank end with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ffkit.models import create_model
from ffkit.objectives import AdaptiveNegative, RandomNegative
from ffkit.train import LocalTrainer
from ffkit.train.chapters import ChapterTrainer
from helpers.distributed import torchrun

WORKER = Path(__file__).parent / "helpers" / "chapters_worker.py"


def _model(name: str = "deeperforward_tinycnn", **kw):
    torch.manual_seed(0)
    if name.startswith("hinton_mlp"):
        kw.setdefault("negatives", "fixed")
        return create_model("hinton_mlp", width_multiplier=0.1, head=name == "hinton_mlp_head", **kw)
    return create_model(name, width_multiplier=0.1, in_channels=3, dropout=0.0, **kw)


def _loader(c: int = 3, n: int = 48, batch: int = 8) -> DataLoader:
    """Six fixed batches ``(x [8, c, 32, 32], y [8], index [8])``, the same on every rank (no shuffling)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=batch)


def _assert_same_weights(a, b, atol: float = 0.0) -> None:
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


def _sequential(name: str, chapter: int, epochs: int = 1, n: int = 48, **options):
    net = _model(name)
    trainer = ChapterTrainer(net, chapter_batches=chapter, **options)
    for _ in range(epochs):
        record = trainer.train_epoch(_loader(net.in_channels, n=n))
    return net, trainer, record


def test_sequential_chapters_equal_the_hand_written_loop():
    """S = 1: for each chapter, for each layer, for each batch: the layer's input comes from layers 0..l-1 as they
    are after this chapter, and the layer takes LocalTrainer's local step. Bit-identical weights and schedules."""
    options = {"schedule": "cosine", "total_steps": 6}
    net, trainer, record = _sequential("deeperforward_tinycnn", chapter=2, **options)

    ref = _model()
    inner = LocalTrainer(ref, **options)
    batches = list(_loader())
    for c in range(3):
        for layer in range(len(ref)):
            for x, y, _ in batches[2 * c : 2 * c + 2]:
                if layer == 0:
                    h = x
                else:
                    with torch.no_grad():
                        h = [o.features for _, o in ref.iter_layers(x, end=layer - 1)][-1]
                inner.train_layers(ref.objective.prepare(ref, x, y), h, start=layer, end=layer)
                inner.step_schedules_of([layer])
    _assert_same_weights(ref, net)
    assert [s.last_epoch for s in trainer.schedulers] == [6] * len(net)  # one step per batch the layer trained on
    assert record["chapters"] == 3 and record["ranks"] == 1 and record["train_images"] == 48
    assert len(record["train_loss"]) == len(net) and all(0 <= a <= 1 for a in record["train_acc"])
    assert trainer.step_count == 6 and trainer.chapters_trained == 3


def test_chapters_are_not_local_training():
    """With chapters of two batches layer 1 reads layer 0 only after layer 0 finished the chapter, so it differs from
    LocalTrainer's batch-by-batch loop; layer 0 sees the same batches with the same weights in both."""
    net, _, _ = _sequential("deeperforward_tinycnn", chapter=2, schedule="constant")
    ref = _model()
    local = LocalTrainer(ref, schedule="constant")
    for x, y, _ in _loader():
        local.train_step(x, y)
    assert not torch.equal(net.layers[1].conv.weight, ref.layers[1].conv.weight)
    assert torch.equal(net.layers[0].conv.weight, ref.layers[0].conv.weight)


def test_one_chapter_per_epoch_and_train_step():
    net, trainer, record = _sequential("deeperforward_tinycnn", chapter=100, schedule="constant")
    assert record["chapters"] == 1 and trainer.chapters_trained == 1
    # train_step is a one-batch chapter: six of them equal an epoch cut into one-batch chapters.
    a, _, _ = _sequential("deeperforward_tinycnn", chapter=1, schedule="constant")
    b = _model()
    stepper = ChapterTrainer(b, chapter_batches=1, schedule="constant")
    for x, y, i in _loader():
        res = stepper.train_step(x, y, i)
    _assert_same_weights(a, b)
    assert res.losses.shape == (len(b),) and res.batch_size == 8


def test_fixed_negatives_mlp_sequential_runs_two_epochs():
    net, trainer, record = _sequential("hinton_mlp", chapter=4, epochs=2, schedule="constant")
    assert record["chapters"] == 2 and trainer.step_count == 12
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_bad_arguments():
    net = _model()
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"chapter_batches must be an int >= 1 \(batches per chapter\)"):
            ChapterTrainer(net, chapter_batches=bad)
    for bad in (True, 2.0):
        with pytest.raises(TypeError, match="chapter_batches must be an int"):
            ChapterTrainer(net, chapter_batches=bad)
    with pytest.raises(ValueError, match="timeout"):
        ChapterTrainer(net, chapter_batches=2, timeout=0)
    with pytest.raises(ValueError, match="overlap"):
        ChapterTrainer(net, chapter_batches=2, overlap=True)
    with pytest.raises(TypeError, match="network"):
        ChapterTrainer(torch.nn.Linear(2, 2), chapter_batches=2)
    with pytest.raises(ValueError, match="empty"):
        ChapterTrainer(net, chapter_batches=2, schedule="constant").train_epoch([])
    with pytest.raises(TypeError, match="local_data"):
        ChapterTrainer(net, chapter_batches=2, local_data=1)
    with pytest.raises(ValueError, match="hybrid"):
        ChapterTrainer(create_model("dtg_mlp", hidden=(8, 8), head=True), chapter_batches=2)


def test_softmax_layer_trains_after_the_chapters_layers_on_a_neutral_label_pass():
    """Pipeline-FF's release: after every FF layer has trained on the chapter, its softmax layer trains over the
    chapter's batches, with its own Adam, on the ReLU activities of layers 1..L-1 of a neutral-label pass through the
    layers as the chapter left them."""
    net, trainer, record = _sequential("hinton_mlp_head", chapter=2, schedule="constant")
    ref = _model("hinton_mlp_head")
    inner = LocalTrainer(ref, schedule="constant")
    batches = list(_loader(1))
    head_opt = inner.optimizers[-1]
    for c in range(3):
        chapter = batches[2 * c : 2 * c + 2]
        for layer in range(len(ref)):
            for x, y, i in chapter:
                with torch.no_grad():
                    h = ref.objective.prepare(ref, x, y, i).inputs
                    for earlier in ref.layers[:layer]:
                        h = earlier(h).features
                inner.train_layers(ref.objective.prepare(ref, x, y, i), h, start=layer, end=layer)
        for x, y, _ in chapter:
            with torch.no_grad():
                h = ref.objective.encoder(x, None)  # the neutral label: 1/K on the label pixels
                feats = []
                for k, layer in enumerate(ref.layers):
                    h = layer(h).features
                    if k > 0:
                        feats.append(h)
            head_opt.zero_grad()
            F.cross_entropy(torch.cat(feats, dim=1) @ ref.head.linear.weight.T, y).backward()
            head_opt.step()
    _assert_same_weights(ref, net)
    assert trainer.schedulers[-1] is None  # constant: nothing to step
    assert 0 <= record["train_head_acc"] <= 1 and record["train_head_loss"] > 0


def test_negatives_are_drawn_once_per_chapter_and_shared_by_every_layer():
    """The release draws one wrong label per sample per chapter, used by every layer: the sampler runs once per batch
    of a chapter, not once per layer."""
    calls = []

    class Counting(RandomNegative):
        def __call__(self, y, **kw):
            calls.append(len(y))
            return super().__call__(y, **kw)

    net = _model("hinton_mlp", negatives="random")
    net.objective.negatives = Counting(10)
    ChapterTrainer(net, chapter_batches=2, schedule="constant").train_epoch(_loader(1))
    assert calls == [8] * 6  # 3 chapters of 2 batches, 4 layers each


def test_adaptive_negatives_first_chapter_random_then_scored_before_each_chapter():
    """AdaptiveNEG as the release: the first chapter trains on uniformly drawn negatives, every later chapter on the
    hardest wrong labels under the network as the previous chapter left it."""
    seen = []

    class Recording(AdaptiveNegative):
        def __call__(self, y, *, x=None, network=None, index=None):
            seen.append(network.layers[-1].linear.weight.detach().clone())
            return super().__call__(y, x=x, network=network, index=index)

    def run(n_batches):
        net = _model("hinton_mlp", negatives="adaptive")
        net.objective.negatives = Recording(10)
        ChapterTrainer(net, chapter_batches=2, schedule="constant").train_epoch(list(_loader(1))[:n_batches])
        return net

    # One chapter: the network after it is the one that scores the next chapter's negatives.
    after_first = run(2).layers[-1].linear.weight.detach().clone()
    assert seen == []
    run(6)
    assert len(seen) == 4  # chapters 1 and 2, two batches each; none for chapter 0
    assert torch.equal(seen[0], after_first) and torch.equal(seen[1], after_first)
    assert torch.equal(seen[2], seen[3]) and not torch.equal(seen[1], seen[2])


def _torchrun(tmp_path, *args, timeout=120, env_extra=None):
    return torchrun(str(WORKER), str(tmp_path / "out.pt"), *args, timeout=timeout, env_extra=env_extra)


@pytest.mark.parametrize(
    "name,epochs,chapter", [("deeperforward_tinycnn", 1, 2), ("hinton_mlp", 2, 1), ("hinton_mlp_head", 1, 2)]
)
def test_two_ranks_equal_the_sequential_loop(tmp_path, name, epochs, chapter):
    """Two processes over gloo on 127.0.0.1 pass each layer (weights, Adam state, cosine schedule) from chapter to
    chapter: the same weights as the one-process loop within float tolerance (the ranks run one thread)."""
    proc, _ = _torchrun(tmp_path, name, str(epochs), str(chapter))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    ref, _, ref_record = _sequential(name, chapter, epochs=epochs, schedule="cosine", total_steps=6 * epochs)
    net = _model(name)
    net.load_state_dict(result["state"])
    _assert_same_weights(ref, net, atol=1e-4)
    record = result["record"]
    assert record["ranks"] == 2 and record["train_images"] == 48 and record["chapters"] == 6 // chapter
    torch.testing.assert_close(torch.tensor(record["train_loss"]), torch.tensor(ref_record["train_loss"]),
                               atol=1e-4, rtol=1e-4)
    assert result["chapters_trained"] == epochs * -(-(6 // chapter) // 2)  # rank 0: chapters 0, 2, 4, ...


def test_two_ranks_on_their_own_data_equal_the_interleaved_sequential_loop(tmp_path):
    """Pipeline-FF's federated variant (``local_data=True``): each rank trains on its own half of the data, and the
    layers travel in chapter order, so rank 0's k-th chapter is chapter 2k and rank 1's is chapter 2k + 1: the same
    weights as one process over the two halves' chapters interleaved."""
    proc, _ = _torchrun(tmp_path, "hinton_mlp", "1", "1", env_extra={"FFKIT_TEST_LOCAL_DATA": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    batches = list(_loader(1))
    interleaved = [b for pair in zip(batches[:3], batches[3:]) for b in pair]  # rank 0's and rank 1's, alternately
    ref = _model("hinton_mlp")
    ref_record = ChapterTrainer(ref, chapter_batches=1, schedule="cosine", total_steps=6).train_epoch(interleaved)
    net = _model("hinton_mlp")
    net.load_state_dict(result["state"])
    _assert_same_weights(ref, net, atol=1e-4)
    record = result["record"]
    assert record["ranks"] == 2 and record["train_images"] == 48 and record["chapters"] == 6
    torch.testing.assert_close(torch.tensor(record["train_loss"]), torch.tensor(ref_record["train_loss"]),
                               atol=1e-4, rtol=1e-4)
    assert result["chapters_trained"] == 3


def test_a_lost_rank_ends_the_job_with_a_clear_error(tmp_path):
    proc, seconds = _torchrun(tmp_path, "deeperforward_tinycnn", "1", "1", "kill",
                              env_extra={"FFKIT_TEST_TIMEOUT": "5"})
    assert proc.returncode != 0
    assert seconds < 60
    log = proc.stdout + proc.stderr
    assert "PipelineError" in log or "exitcode" in log, log[-3000:]
