"""The contrastive role loss (Eq. 4) against hand-computed 4-agent examples, masks and dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from acorm_pl.losses.contrastive import contrastive_role_loss

# S[i][j] = score of anchor i against key j (the diagonal is never used)
S = [
    [0.0, 1.0, 2.0, 3.0],
    [4.0, 0.0, 1.0, 2.0],
    [0.5, 1.5, 0.0, -1.0],
    [2.0, -2.0, 1.0, 0.0],
]
E = math.exp


def _nll(pos: list[float], keys: list[float]) -> float:
    """-log(sum_pos exp / sum_keys exp) with plain math."""
    return -math.log(sum(E(x) for x in pos) / sum(E(x) for x in keys))


def _run(labels: list[int], alive: list[bool] | None = None, scores: torch.Tensor | None = None):
    s = torch.tensor(S) if scores is None else scores
    lab = torch.tensor([labels])
    al = torch.ones(1, 4, dtype=torch.bool) if alive is None else torch.tensor([alive])
    return contrastive_role_loss(s.unsqueeze(0), lab, al)


def test_two_pairs_by_hand():
    loss, stats = _run([0, 0, 1, 1])
    expected = [
        _nll([1.0], [1.0, 2.0, 3.0]),  # anchor 0: positive 1, negatives 2, 3
        _nll([4.0], [4.0, 1.0, 2.0]),  # anchor 1: positive 0
        _nll([-1.0], [0.5, 1.5, -1.0]),  # anchor 2: positive 3
        _nll([1.0], [2.0, -2.0, 1.0]),  # anchor 3: positive 2
    ]
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(expected) / 4, abs=1e-6)
    assert stats["n_anchors"].item() == 4.0
    assert stats["positive_fraction"].item() == pytest.approx(1 / 3)
    # best keys: anchor 0 -> 3 (neg), 1 -> 0 (pos), 2 -> 1 (neg), 3 -> 0 (neg)
    assert stats["accuracy"].item() == pytest.approx(0.25)
    assert not any(v.requires_grad for v in stats.values())


def test_several_positives_and_a_lone_anchor():
    # agent 3 is alone in its cluster: not an anchor, but still a negative key for the others
    loss, stats = _run([0, 0, 0, 1])
    expected = [
        _nll([1.0, 2.0], [1.0, 2.0, 3.0]),
        _nll([4.0, 1.0], [4.0, 1.0, 2.0]),
        _nll([0.5, 1.5], [0.5, 1.5, -1.0]),
    ]
    assert loss.item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    assert stats["n_anchors"].item() == 3.0
    assert stats["positive_fraction"].item() == pytest.approx(2 / 3)
    assert stats["accuracy"].item() == pytest.approx(2 / 3)  # anchor 0's best key is the lone agent 3


def test_dead_agent_is_neither_anchor_nor_key():
    alive = [True, True, False, True]
    loss, stats = _run([0, 0, 1, 1], alive)
    # agent 2 dead: anchor 3 loses its only positive (not counted); column 2 leaves every denominator
    expected = [_nll([1.0], [1.0, 3.0]), _nll([4.0], [4.0, 2.0])]
    assert loss.item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert stats["n_anchors"].item() == 2.0
    changed = torch.tensor(S)
    changed[2, :] = 50.0
    changed[:, 2] = -50.0
    loss2, _ = _run([0, 0, 1, 1], alive, changed)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)


def test_unlabelled_anchor_not_counted_but_still_a_key():
    loss, stats = _run([0, 0, -1, 1])
    expected = [_nll([1.0], [1.0, 2.0, 3.0]), _nll([4.0], [4.0, 1.0, 2.0])]
    assert loss.item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert stats["n_anchors"].item() == 2.0


def test_mean_is_over_anchors_of_all_groups():
    scores = torch.tensor([S, S])
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])
    loss, stats = contrastive_role_loss(scores, labels, torch.ones(2, 4, dtype=torch.bool))
    first = [
        _nll([1.0], [1.0, 2.0, 3.0]),
        _nll([4.0], [4.0, 1.0, 2.0]),
        _nll([-1.0], [0.5, 1.5, -1.0]),
        _nll([1.0], [2.0, -2.0, 1.0]),
    ]
    second = [_nll([1.0, 2.0], [1.0, 2.0, 3.0]), _nll([4.0, 1.0], [4.0, 1.0, 2.0]), _nll([0.5, 1.5], [0.5, 1.5, -1.0])]
    assert loss.item() == pytest.approx(sum(first + second) / 7, abs=1e-6)
    assert stats["n_anchors"].item() == 7.0


def test_no_anchor_gives_zero_and_backward_works():
    scores = torch.tensor(S).unsqueeze(0).requires_grad_(True)
    for labels, alive in [([0, 1, 2, 3], [True] * 4), ([0, 0, 1, 1], [False] * 4), ([-1] * 4, [True] * 4)]:
        scores.grad = None
        loss, stats = contrastive_role_loss(scores, torch.tensor([labels]), torch.tensor([alive]))
        assert loss.item() == 0.0
        assert stats["n_anchors"].item() == 0.0
        assert stats["accuracy"].item() == 0.0 and stats["positive_fraction"].item() == 0.0
        loss.backward()
        assert torch.equal(scores.grad, torch.zeros_like(scores))


def test_gradient_is_finite_and_only_on_used_entries():
    scores = torch.tensor(S).unsqueeze(0).requires_grad_(True)
    loss, _ = contrastive_role_loss(scores, torch.tensor([[0, 0, 1, 1]]), torch.tensor([[True, True, False, True]]))
    loss.backward()
    grad = scores.grad[0]
    assert torch.isfinite(grad).all()
    assert torch.all(grad.diagonal() == 0)  # the anchor is never its own key
    assert torch.all(grad[2] == 0) and torch.all(grad[:, 2] == 0)  # dead agent
    assert torch.all(grad[3] == 0)  # anchor 3 lost its only positive
    assert grad[0, 1] < 0 and grad[0, 3] > 0  # raise the positive, lower the negative


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_scores_same_value(dtype: torch.dtype):
    # every score in S is exact in fp16 and bf16, so only the math precision could differ
    ref, _ = _run([0, 0, 1, 1], [True, True, False, True])
    low, _ = _run([0, 0, 1, 1], [True, True, False, True], torch.tensor(S, dtype=dtype))
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), abs=1e-6)
    # scores far beyond fp16's exp range: float32 math must give the float32 answer, with no inf or NaN
    big = (torch.tensor(S) * 1.0e4).to(dtype).unsqueeze(0)
    labels, alive = torch.tensor([[0, 0, 1, 1]]), torch.ones(1, 4, dtype=torch.bool)
    loss, _ = contrastive_role_loss(big, labels, alive)
    assert torch.isfinite(loss)
    assert loss.item() == contrastive_role_loss(big.float(), labels, alive)[0].item()
    assert loss.item() == pytest.approx((2.0e4 + 0.0 + 2.5e4 + 1.0e4) / 4, rel=1e-2)  # bf16 rounds S * 1e4
