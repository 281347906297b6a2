"""PPO pieces against hand-computed values: GAE (terminal vs truncated, padding), clipping, masks, entropy."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import acorm_pl  # noqa: F401
import math

import pytest
import torch

from acorm_pl.losses import (
    clipped_surrogate_loss,
    gae,
    masked_entropy,
    masked_log_softmax,
    normalize_advantages,
    sample_actions,
    value_loss,
)

# Two episodes padded to T = 4 (gamma = lambda = 0.5). Episode 0 ends in a true terminal after 3 steps,
# episode 1 is truncated (time limit) after 2 steps. Entries past each episode's end are padding.
REWARD = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
VALUES = torch.tensor([[10.0, 20.0, 30.0, 40.0, 99.0], [10.0, 20.0, 30.0, 77.0, 88.0]])
TERMINATED = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
FILLED = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
# By hand, A_t = delta_t + gamma * lambda * A_{t+1}:
#   episode 0: delta_2 = 3 - 30 = -27 (terminal: no bootstrap); delta_1 = 2 + .5*30 - 20 = -3,
#              A_1 = -3 + .25*(-27) = -9.75; delta_0 = 1 + .5*20 - 10 = 1, A_0 = 1 + .25*(-9.75) = -1.4375
#   episode 1: delta_1 = 2 + .5*30 - 20 = -3 (truncated: bootstraps from V(s_2) = 30); A_0 = 1 + .25*(-3) = 0.25
EXPECTED_ADV = torch.tensor([[-1.4375, -9.75, -27.0, 0.0], [0.25, -3.0, 0.0, 0.0]])


def test_gae_by_hand_terminal_vs_truncated():
    adv, ret = gae(REWARD, VALUES, TERMINATED, FILLED, gamma=0.5, lam=0.5)
    assert adv.dtype == torch.float32
    assert torch.allclose(adv, EXPECTED_ADV)
    assert torch.allclose(ret, (EXPECTED_ADV + VALUES[:, :-1]) * FILLED)
    # the same truncated episode read as a terminal loses the bootstrap: delta_1 = 2 - 20, A_0 = 1 + .25*(-18)
    adv_term, _ = gae(REWARD, VALUES, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), FILLED, 0.5, 0.5)
    assert torch.allclose(adv_term[1, :2], torch.tensor([-3.5, -18.0]))


def test_gae_ignores_padding():
    values, reward = VALUES.clone(), REWARD.clone()
    values[0, 4] = values[1, 3:] = -1e6  # beyond each episode's final state
    reward[0, 3] = reward[1, 2:] = 1e6
    adv, ret = gae(reward, values, TERMINATED, FILLED, 0.5, 0.5)
    assert torch.allclose(adv, EXPECTED_ADV)
    assert torch.all(adv[FILLED == 0] == 0) and torch.all(ret[FILLED == 0] == 0)
    # the terminal episode's final-state value is never used either
    values[0, 3] = 1e6
    assert torch.allclose(gae(reward, values, TERMINATED, FILLED, 0.5, 0.5)[0], EXPECTED_ADV)


def test_gae_per_agent_values_share_reward_and_episode_end():
    values = torch.stack([VALUES, VALUES * 2.0, VALUES - 5.0], dim=-1)  # [B, T+1, N = 3]
    adv, ret = gae(REWARD, values, TERMINATED, FILLED, 0.5, 0.5)
    assert adv.shape == ret.shape == (2, 4, 3)
    for i in range(3):
        single, single_ret = gae(REWARD, values[..., i], TERMINATED, FILLED, 0.5, 0.5)
        assert torch.allclose(adv[..., i], single) and torch.allclose(ret[..., i], single_ret)
    assert torch.allclose(adv[..., 0], EXPECTED_ADV)


def test_gae_lambda_one_is_the_discounted_return_minus_value():
    adv, ret = gae(REWARD, VALUES, TERMINATED, FILLED, gamma=0.5, lam=1.0)
    assert torch.allclose(ret[0, :3], torch.tensor([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]))
    assert torch.allclose(ret[1, :2], torch.tensor([1 + 0.5 * 2 + 0.25 * 30, 2 + 0.5 * 30]))


@pytest.mark.parametrize(
    ("ratio", "advantage", "gradient_flows"),
    [
        (1.0, 1.0, True),
        (1.1, 1.0, True),  # inside the trust region
        (1.5, 1.0, False),  # beyond 1 + eps with A > 0: the clipped term is the minimum
        (0.5, 1.0, True),  # below 1 - eps with A > 0: min keeps the unclipped (pessimistic) term
        (0.5, -1.0, False),  # below 1 - eps with A < 0: clipped
        (1.5, -1.0, True),  # above 1 + eps with A < 0: unclipped is the minimum
        (1.2, 1.0, True),  # exactly at the boundary: both terms agree
        (0.8, -1.0, True),
    ],
)
def test_clipped_surrogate_at_and_beyond_the_boundaries(ratio, advantage, gradient_flows):
    old = torch.zeros(1)
    log_probs = torch.tensor([math.log(ratio)], requires_grad=True)
    loss, stats = clipped_surrogate_loss(log_probs, old, torch.tensor([advantage]), torch.ones(1), clip=0.2)
    clipped_ratio = min(max(ratio, 0.8), 1.2)
    assert loss.item() == pytest.approx(-min(ratio * advantage, clipped_ratio * advantage), abs=1e-6)
    loss.backward()
    if gradient_flows:
        assert log_probs.grad.item() == pytest.approx(-advantage * ratio, rel=1e-5)  # d(-rho A)/d log pi
    else:
        assert log_probs.grad.item() == 0.0
    if abs(abs(ratio - 1.0) - 0.2) > 1e-3:  # exactly at the boundary rho is 1.2 +- float32 rounding
        assert stats["clip_fraction"].item() == float(abs(ratio - 1.0) > 0.2)
    assert stats["approx_kl"].item() == pytest.approx(ratio - 1 - math.log(ratio), abs=1e-6)


def test_clipped_surrogate_averages_over_valid_entries_only():
    log_probs = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 2.0, 3.0], [100.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    loss, _ = clipped_surrogate_loss(log_probs, log_probs, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-2.0)


def test_value_loss_plain_and_clipped():
    v, old, ret = torch.tensor([3.0, 0.5]), torch.tensor([1.0, 0.0]), torch.tensor([4.0, 0.0])
    mask = torch.ones(2)
    assert value_loss(v, old, ret, mask).item() == pytest.approx((1.0 + 0.25) / 2)
    # clipped: V_old + clip(V - V_old) = 1.5 (err 6.25 > 1) and 0.5 (same as unclipped): max per entry
    assert value_loss(v, old, ret, mask, clip=0.5).item() == pytest.approx((6.25 + 0.25) / 2)
    assert value_loss(v, old, ret, torch.tensor([0.0, 1.0]), clip=0.5).item() == pytest.approx(0.25)


def test_advantage_normalisation_over_valid_entries_only():
    adv = torch.tensor([[1.0, 2.0, 3.0, 1e6], [4.0, 5.0, -7e5, 8e5]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    out = normalize_advantages(adv, mask)
    valid = out[mask.bool()]
    assert valid.mean().abs() < 1e-6
    assert valid.var(unbiased=False).sqrt().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(out[~mask.bool()] == 0)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) - 3.0) / math.sqrt(2.0)
    assert torch.allclose(valid, expected, atol=1e-4)


class _OtherRank:
    """``reduce`` of rank 0 in a simulated 2-rank run: adds what rank 1, holding ``adv``/``mask``, contributes
    to each of normalize_advantages' two sums (valid sum and count, then squared deviations)."""

    def __init__(self, adv: torch.Tensor, mask: torch.Tensor) -> None:
        self.adv, self.mask, self.mean = adv, mask, None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            mine = torch.stack([(self.adv * self.mask).sum(), self.mask.sum()])
            self.mean = (t[0] + mine[0]) / (t[1] + mine[1])
            return t + mine
        return t + ((self.adv - self.mean) ** 2 * self.mask).sum()


def test_advantage_normalisation_across_ranks_equals_the_whole_batch():
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0], [-2.0, 0.5, 7.0], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    whole = normalize_advantages(adv, mask)
    rank0 = normalize_advantages(adv[:2], mask[:2], reduce=_OtherRank(adv[2:], mask[2:]))
    rank1 = normalize_advantages(adv[2:], mask[2:], reduce=_OtherRank(adv[:2], mask[:2]))
    assert torch.allclose(torch.cat([rank0, rank1]), whole, atol=1e-6)
    assert not torch.allclose(rank0, normalize_advantages(adv[:2], mask[:2]))  # per-rank statistics differ


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unavailable_actions_get_exactly_zero_probability(dtype):
    head = torch.nn.Linear(4, 4)
    with torch.no_grad():
        head.weight.copy_(torch.eye(4) * 5.0)  # the unavailable action 1 of agent 0 gets the largest logit
    x = torch.tensor([[0.2, 2.0, 0.1, 0.0], [0.2, 0.4, 0.6, 0.8]])
    avail = torch.tensor([[True, False, True, True], [False, False, False, True]])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = head(x)
        assert logits.dtype == dtype
        logp = masked_log_softmax(logits, avail)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    probs = logp.exp()
    assert torch.all(probs[~avail] == 0)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert probs[1, 3] == 1.0
    ent = masked_entropy(logp, avail)
    assert ent[1].item() == 0.0 and ent[0].item() > 0
    draws = sample_actions(logits.detach().expand(500, 2, 4), avail.expand(500, 2, 4), torch.Generator().manual_seed(0))
    assert bool(avail.expand(500, 2, 4).gather(-1, draws.unsqueeze(-1)).all())
    assert set(draws[:, 0].tolist()) == {0, 2, 3}


def test_entropy_of_uniform_over_available_actions_and_padded_rows_stay_finite():
    logits = torch.zeros(3, 5)
    avail = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    logp = masked_log_softmax(logits, avail)
    ent = masked_entropy(logp, avail)
    assert torch.allclose(ent[:2], torch.tensor([math.log(5), math.log(2)]))
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()  # the padded row (no action) too
    with pytest.raises(ValueError, match="no available action"):
        sample_actions(logits, avail)


def test_entropy_gradient_never_nan_with_masked_actions():
    logits = torch.randn(4, 6, requires_grad=True)
    avail = torch.rand(4, 6) > 0.5
    avail[:, 0] = True
    logp = masked_log_softmax(logits, avail)
    (masked_entropy(logp, avail).sum() + logp[:, 0].sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[~avail] == 0)
