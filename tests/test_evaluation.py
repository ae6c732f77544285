"""Tests for ffkit.evaluation read-outs and SIP layer selection on hand-built scores."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from ffkit.evaluation import (
    EvalReport,
    SIPResult,
    last_k_accuracy,
    layer_accuracies,
    make_report,
    range_accuracy,
    select_layers,
)

# Hand-built scores [L=3, N=4, K=2], labels y = [1, 1, 0, 0].
# With K = 2 the prediction is class 1 exactly when the summed margin m = s1 - s0 is > 0 (no sum is ever 0).
#
#   layer 0: [[1, 0], [4, -2], [0.5, -0.5], [2, 1]]  margins [-1, -6, -1, -1]  preds [0, 0, 0, 0]  acc 2/4 = 0.50
#   layer 1: [[0, 2], [1, 3], [-1, 1], [3, 1]]       margins [ 2,  2,  2, -2]  preds [1, 1, 1, 0]  acc 3/4 = 0.75
#   layer 2: [[1, 3], [0, 3], [2, -1], [0, 1]]       margins [ 2,  3, -3,  1]  preds [1, 1, 0, 1]  acc 3/4 = 0.75
#
# Ranges (start..end, inclusive):
#   0..1: margins [ 1, -4,  1, -3]  preds [1, 0, 1, 0]  correct [T, F, F, T]  0.50
#   1..2: margins [ 4,  5, -1, -1]  preds [1, 1, 0, 0]  correct [T, T, T, T]  1.00
#   0..2: margins [ 3, -1, -2, -2]  preds [1, 0, 0, 0]  correct [T, F, T, T]  0.75
#
# Grid (rows = start, cols = end; NaN below the diagonal):
#          end 0   end 1   end 2
#   s 0    0.50    0.50    0.75
#   s 1     nan    0.75    1.00
#   s 2     nan     nan    0.75
# SIP picks 1..2 (accuracy 1.0, the unique best).
SCORES = torch.tensor(
    [
        [[1.0, 0.0], [4.0, -2.0], [0.5, -0.5], [2.0, 1.0]],
        [[0.0, 2.0], [1.0, 3.0], [-1.0, 1.0], [3.0, 1.0]],
        [[1.0, 3.0], [0.0, 3.0], [2.0, -1.0], [0.0, 1.0]],
    ]
)
LABELS = torch.tensor([1, 1, 0, 0])
NAN = math.nan
GRID = torch.tensor(
    [
        [0.50, 0.50, 0.75],
        [NAN, 0.75, 1.00],
        [NAN, NAN, 0.75],
    ]
)


def test_layer_accuracies():
    accs = layer_accuracies(SCORES, LABELS)
    assert isinstance(accs, list)
    assert accs == pytest.approx([0.5, 0.75, 0.75])


@pytest.mark.parametrize(
    "start, end, expected",
    [(0, 0, 0.5), (1, 1, 0.75), (2, 2, 0.75), (0, 1, 0.5), (1, 2, 1.0), (0, 2, 0.75)],
)
def test_range_accuracy_every_range(start, end, expected):
    acc = range_accuracy(SCORES, LABELS, start, end)
    assert isinstance(acc, float)
    assert acc == pytest.approx(expected)


@pytest.mark.parametrize("k, expected", [(1, 0.75), (2, 1.0), (3, 0.75)])
def test_last_k_accuracy(k, expected):
    # last 1 = 2..2, last 2 = 1..2, last 3 = 0..2
    assert last_k_accuracy(SCORES, LABELS, k) == pytest.approx(expected)


def test_select_layers_picks_best_range():
    res = select_layers(SCORES, LABELS)
    assert isinstance(res, SIPResult)
    assert (res.start, res.end) == (1, 2)
    assert res.accuracy == pytest.approx(1.0)


def test_select_layers_grid():
    res = select_layers(SCORES, LABELS)
    assert res.grid.shape == (3, 3)
    assert_close(res.grid, GRID.to(res.grid.dtype), equal_nan=True)
    # the upper triangle matches range_accuracy entry by entry
    for i in range(3):
        for j in range(i, 3):
            assert res.grid[i, j].item() == pytest.approx(range_accuracy(SCORES, LABELS, i, j))


def test_select_layers_does_not_depend_on_class_offsets():
    # Adding the same constant to both classes of a layer changes no prediction.
    shifted = SCORES + torch.tensor([5.0, -3.0, 100.0]).view(3, 1, 1)
    res = select_layers(shifted, LABELS)
    assert (res.start, res.end) == (1, 2)
    assert_close(res.grid, GRID.to(res.grid.dtype), equal_nan=True)


# -- SIP tie-breaking, as in DeeperForward's released code: ranges are visited by end, then start, and only a strictly
# better range replaces the best, so ties go to the earliest end, then the earliest start. ---------------------------


def test_sip_tie_prefers_earliest_end_then_earliest_start():
    # y = [1, 0]; margins per layer:
    #   layer 0: [-1,  1] -> acc 0     layer 1: [2, -2] -> acc 1     layer 2: [2, -2] -> acc 1
    #   0..1: [1, -1] -> 1   1..2: [4, -4] -> 1   0..2: [3, -3] -> 1
    # grid:   s0: 0, 1, 1 ;  s1: -, 1, 1 ;  s2: -, -, 1
    # Best ties: 0..1, 1..1, 0..2, 1..2, 2..2. Earliest end is 1; of 0..1 and 1..1 the earliest start is 0 -> 0..1.
    scores = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],
            [[0.0, 2.0], [2.0, 0.0]],
            [[0.0, 2.0], [2.0, 0.0]],
        ]
    )
    res = select_layers(scores, torch.tensor([1, 0]))
    assert (res.start, res.end) == (0, 1)
    assert res.accuracy == pytest.approx(1.0)
    assert_close(
        res.grid,
        torch.tensor([[0.0, 1.0, 1.0], [NAN, 1.0, 1.0], [NAN, NAN, 1.0]]).to(res.grid.dtype),
        equal_nan=True,
    )


def test_sip_tie_with_same_end_prefers_earliest_start():
    # y = [1, 0]; margins per layer:
    #   layer 0: [1, 1]       -> acc 0.5
    #   layer 1: [-2.5, -3]   -> acc 0.5
    #   layer 2: [2, -2]      -> acc 1.0
    #   0..1: [-1.5, -5] -> 0.5   1..2: [-0.5, -5] -> 0.5   0..2: [0.5, -4] -> 1.0
    # Best ties: 0..2 and 2..2 (same end) -> earliest start -> 0..2.
    scores = torch.tensor(
        [
            [[0.0, 1.0], [0.0, 1.0]],
            [[0.0, -2.5], [0.0, -3.0]],
            [[0.0, 2.0], [0.0, -2.0]],
        ]
    )
    res = select_layers(scores, torch.tensor([1, 0]))
    assert (res.start, res.end) == (0, 2)
    assert res.accuracy == pytest.approx(1.0)
    assert res.grid[0, 2].item() == pytest.approx(1.0)
    assert res.grid[1, 2].item() == pytest.approx(0.5)


def test_sip_all_ranges_equal_picks_first_layer_alone():
    # Every range has the same accuracy -> earliest end (0), and the only start there is 0.
    scores = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]], [[0.0, 1.0]]])
    res = select_layers(scores, torch.tensor([1]))
    assert (res.start, res.end) == (0, 0)


def test_sip_single_layer():
    res = select_layers(SCORES[:1], LABELS)
    assert (res.start, res.end) == (0, 0)
    assert res.accuracy == pytest.approx(0.5)
    assert res.grid.shape == (1, 1)


# -- make_report ---------------------------------------------------------------------------------------------------


def test_make_report_fields():
    rep = make_report(SCORES, LABELS, sip_range=(1, 2))
    assert isinstance(rep, EvalReport)
    assert rep.per_layer == pytest.approx([0.5, 0.75, 0.75])
    assert rep.all_layers == pytest.approx(0.75)  # 0..2
    assert rep.last3 == pytest.approx(0.75)  # the last three layers are all three
    assert rep.sip == pytest.approx(1.0)
    assert rep.sip_range == (1, 2)
    assert rep.num_samples == 4
    d = rep.to_dict()
    assert set(d) == {"per_layer", "all_layers", "last3", "sip", "sip_range", "num_samples", "head",
                      "goodness_pos", "goodness_neg", "dead_ratio", "sip_grid", "prediction", "prediction_range"}
    assert d["head"] is None and d["dead_ratio"] is None  # no dead_ratio given
    assert d["sip_grid"] == [[0.5, 0.5, 0.75], [None, 0.75, 1.0], [None, None, 0.75]]  # the GRID above
    assert d["sip"] == pytest.approx(1.0)
    assert d["num_samples"] == 4


def test_make_report_without_sip():
    rep = make_report(SCORES, LABELS)
    assert rep.sip is None
    assert rep.sip_range is None
    assert rep.prediction is None and rep.prediction_range is None


def test_make_report_prediction_is_the_networks_read_out():
    # The network's own read-out without SIP: layers 1..2 of the GRID above -> 1.0; layer 0 alone -> 0.5.
    rep = make_report(SCORES, LABELS, prediction_range=(1, 2))
    assert rep.sip is None and rep.prediction == pytest.approx(1.0) and rep.prediction_range == (1, 2)
    assert make_report(SCORES, LABELS, prediction_range=(0, 0)).prediction == pytest.approx(0.5)
    # A network that predicts with its head: the head's accuracy, and no layer range.
    head = torch.tensor([[1.0, 0.0]] * 4)  # always class 0
    rep = make_report(SCORES, LABELS, head_scores=head, prediction_range=(1, 2), head_predicts=True)
    assert rep.prediction == pytest.approx(rep.head) and rep.prediction_range is None
    with pytest.raises(ValueError, match="head_predicts=True needs head_scores"):
        make_report(SCORES, LABELS, head_predicts=True)


def test_make_report_sip_range_list_becomes_tuple():
    rep = make_report(SCORES, LABELS, sip_range=[0, 1])
    assert rep.sip_range == (0, 1)
    assert rep.sip == pytest.approx(0.5)


def test_make_report_last3_with_more_layers():
    # Prepend two layers that are confidently wrong on every sample; all_layers changes, last3 does not.
    # Each wrong layer has margin -5 where y=1 and +5 where y=0 (acc 0). Over 0..4 the margins are
    # [-10, -10, 10, 10] + [3, -1, -2, -2] = [-7, -11, 8, 8] -> preds [0, 0, 1, 1] -> acc 0.
    wrong = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    scores = torch.cat([wrong.expand(2, 4, 2), SCORES])
    rep = make_report(scores, LABELS)
    assert rep.per_layer == pytest.approx([0.0, 0.0, 0.5, 0.75, 0.75])
    assert rep.all_layers == pytest.approx(0.0)
    assert rep.last3 == pytest.approx(0.75)


def test_make_report_two_layers_last3_uses_both():
    rep = make_report(SCORES[1:], LABELS)
    assert rep.last3 == pytest.approx(1.0)  # layers 1..2 of the original


def test_make_report_bad_sip_range():
    with pytest.raises(ValueError, match="layer range"):
        make_report(SCORES, LABELS, sip_range=(2, 1))


# -- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start, end", [(2, 1), (-1, 1), (0, 3), (3, 3)])
def test_range_accuracy_bad_range(start, end):
    with pytest.raises(ValueError, match="layer range"):
        range_accuracy(SCORES, LABELS, start, end)


@pytest.mark.parametrize("k", [0, -1, 4])
def test_last_k_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        last_k_accuracy(SCORES, LABELS, k)


@pytest.mark.parametrize(
    "fn", [layer_accuracies, lambda s, y: range_accuracy(s, y, 0, 0), lambda s, y: last_k_accuracy(s, y, 1)]
)
def test_metrics_reject_bad_shapes(fn):
    with pytest.raises(ValueError, match=r"\[L, N, K\]"):
        fn(SCORES[0], LABELS)
    with pytest.raises(ValueError, match="labels"):
        fn(SCORES, LABELS[:3])


def test_select_layers_bad_shapes():
    with pytest.raises(ValueError):
        select_layers(SCORES[0], LABELS)
    with pytest.raises(ValueError):
        select_layers(SCORES, LABELS[:3])


class _RowScores(torch.nn.Module):
    """Class scores that a hand can follow: layer 1 reads the first row's first two pixels, layer 2 doubles them, and
    the head reads the first row's last pixel against its first."""

    head = True

    def layer_scores(self, x):
        s = x[:, 0, 0, :2]
        return torch.stack([s, 2 * s])

    def scores(self, x):
        row = x[:, 0, 0]
        return self.layer_scores(x), torch.stack([row[:, -1], row[:, 0]], dim=1)


def test_flip_tta_averages_each_image_with_its_mirror_image():
    from ffkit.evaluation import collect_scores

    # rows [1, 2, 3, 4] and [0, 4, 2, 0]; mirrored [4, 3, 2, 1] and [0, 2, 4, 0]
    x = torch.tensor([[1.0, 2, 3, 4], [0, 4, 2, 0]]).view(2, 1, 1, 4)
    y = torch.tensor([0, 1])
    plain = collect_scores(_RowScores(), [(x, y)])
    assert_close(plain.layers[0], torch.tensor([[1.0, 2], [0, 4]]))
    got = collect_scores(_RowScores(), [(x, y)], tta="flip")
    # layer 1: ((1, 2) + (4, 3)) / 2 = (2.5, 2.5); ((0, 4) + (0, 2)) / 2 = (0, 3)
    assert_close(got.layers[0], torch.tensor([[2.5, 2.5], [0.0, 3.0]]))
    assert_close(got.layers[1], 2 * got.layers[0])
    # head: (last, first) = (4, 1) and mirrored (1, 4): (2.5, 2.5); (0, 0) both ways
    assert_close(got.head, torch.tensor([[2.5, 2.5], [0.0, 0.0]]))


def test_tta_is_checked():
    from ffkit.evaluation import collect_scores

    x = torch.zeros(2, 1, 1, 4)
    with pytest.raises(ValueError, match=r"tta must be None or one of \('flip',\), got 'mirror'"):
        collect_scores(_RowScores(), [(x, torch.zeros(2))], tta="mirror")

    class Flat(_RowScores):
        def layer_scores(self, x):
            return torch.stack([x[:, :2]])

    with pytest.raises(ValueError, match=r"tta='flip' mirrors images \[B, C, H, W\], got a batch of shape \(2, 4\)"):
        collect_scores(Flat(), [(torch.zeros(2, 4), torch.zeros(2))], tta="flip")
