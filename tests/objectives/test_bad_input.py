"""Bad input gives a ValueError that names the field and says what was expected."""

import pytest
import torch

from minirlhf.objectives import (
    AdaptiveKLController,
    aggregate_loss,
    bradley_terry_loss,
    conjugate_gradient,
    davidson_probs,
    dpo_loss,
    expected_calibration_error,
    fleiss_kappa,
    gae,
    group_advantages,
    hessian_vector_product,
    kl_estimate,
    logprobs_from_logits,
    masked_var,
    plackett_luce_loss,
    ppo_policy_loss,
    rloo_advantages,
    set_flat_params,
    trpo_step,
    value_loss,
    whiten,
)

X = torch.zeros(2, 3)
M = torch.ones(2, 3)


def test_unknown_kinds_list_the_choices():
    with pytest.raises(ValueError, match=r"kind.*'k4'.*k1, k2, k3, abs"):
        kl_estimate(X, X, "k4")
    with pytest.raises(ValueError, match=r"loss_agg.*'sum'.*token_mean, seq_mean, seq_sum_const"):
        ppo_policy_loss(X, X, X, M, loss_agg="sum")
    v = torch.zeros(3)
    with pytest.raises(ValueError, match=r"loss_type.*'kto'.*sigmoid, ipo, hinge"):
        dpo_loss(v, v, v, v, loss_type="kto")


def test_shape_mismatches_name_the_fields():
    with pytest.raises(ValueError, match=r"old_logp has shape \(2, 4\).*logp has shape \(2, 3\)"):
        ppo_policy_loss(X, torch.zeros(2, 4), X, M)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 2\)"):
        ppo_policy_loss(X, X, X, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"values has shape"):
        gae(X, torch.zeros(2, 4), M, 1.0, 0.95)
    with pytest.raises(ValueError, match=r"rewards: expected a 2-d tensor \(B,T\)"):
        gae(torch.zeros(3), torch.zeros(3), torch.ones(3), 1.0, 0.95)
    with pytest.raises(ValueError, match=r"rejected has shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"ref_rejected_logps has shape"):
        dpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"r_l has shape"):
        davidson_probs(torch.zeros(3), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match=r"returns has shape"):
        value_loss(X, X, torch.zeros(3, 2), M)
    with pytest.raises(ValueError, match=r"scores: expected a 2-d tensor"):
        plackett_luce_loss(torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 3\)"):
        logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"N = 7 is not a multiple of group_size = 4"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match=r"N = 5 is not a multiple of group_size = 2"):
        rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"group_size: expected an int >= 2"):
        group_advantages(torch.zeros(4), 1)  # the std of one sample is undefined
    with pytest.raises(ValueError, match=r"group_size: expected an int >= 2"):
        rloo_advantages(torch.zeros(4), 1)


def test_gae_rejects_holes_in_the_mask_and_bad_discounts():
    with pytest.raises(ValueError, match=r"right-padded"):
        gae(X, X, torch.tensor([[1, 0, 1], [1, 1, 1]]), 1.0, 0.95)
    with pytest.raises(ValueError, match=r"gamma"):
        gae(X, X, M, 1.5, 0.95)
    with pytest.raises(ValueError, match=r"lam"):
        gae(X, X, M, 0.99, -0.1)


def test_logprobs_reject_ignore_index_labels_and_zero_temperature():
    with pytest.raises(ValueError, match=r"\[0, 5\).*-100"):
        logprobs_from_logits(torch.zeros(1, 2, 5), torch.tensor([[1, -100]]))
    with pytest.raises(ValueError, match=r"temperature"):
        logprobs_from_logits(torch.zeros(1, 2, 5), torch.tensor([[1, 2]]), temperature=0.0)


def test_out_of_range_coefficients():
    v = torch.zeros(3)
    with pytest.raises(ValueError, match=r"prob: expected values <= 1"):
        bradley_terry_loss(v, v, prob=1.2)
    with pytest.raises(ValueError, match=r"strength: expected values > 0"):
        bradley_terry_loss(v, v, strength=0.0)
    with pytest.raises(ValueError, match=r"label_smoothing: expected values <= 1"):
        dpo_loss(v, v, v, v, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"label_smoothing: only loss_type='sigmoid'"):
        dpo_loss(v, v, v, v, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"beta: expected > 0"):
        dpo_loss(v, v, v, v, beta=0.0)
    with pytest.raises(ValueError, match=r"clip_eps"):
        ppo_policy_loss(X, X, X, M, clip_eps=0.0)
    with pytest.raises(ValueError, match=r"max_len"):
        aggregate_loss(X, M, "seq_sum_const", max_len=0)
    with pytest.raises(ValueError, match=r"target: expected a target KL > 0"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)
    with pytest.raises(ValueError, match=r"load_state_dict: expected a dict with key 'value'"):
        AdaptiveKLController(0.1, 6.0, 100).load_state_dict({"beta": 1.0})


def test_statistics_that_are_undefined():
    with pytest.raises(ValueError, match=r"at least 2 valid entries"):
        masked_var(torch.tensor([1.0, 2.0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"at least 2 valid entries"):
        whiten(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"same number of annotators"):
        fleiss_kappa(torch.tensor([[2, 1], [1, 1]]))
    with pytest.raises(ValueError, match=r"probs: expected probabilities in \[0, 1\]"):
        expected_calibration_error(torch.tensor([1.2]), torch.tensor([1.0]))


def test_trust_region_inputs():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"flat: expected a 1-d tensor of 3 entries"):
        set_flat_params([p], torch.zeros(4))
    with pytest.raises(ValueError, match=r"vector: expected a flat tensor of shape \(3,\)"):
        hessian_vector_product((p**2).sum(), [p], torch.zeros(2))
    with pytest.raises(ValueError, match=r"b: expected a 1-d tensor"):
        conjugate_gradient(lambda v: v, torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"max_kl: expected > 0"):
        trpo_step([p], lambda: p.sum(), lambda: (p**2).sum(), max_kl=0.0)
    with pytest.raises(ValueError, match=r"params: expected a non-empty list"):
        trpo_step([], lambda: p.sum(), lambda: (p**2).sum(), max_kl=0.01)
