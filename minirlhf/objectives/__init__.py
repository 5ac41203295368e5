"""minirlhf.objectives: the pure-math layer (torch only; tensors in, tensors out).

policy.py       log-probs, entropy, KL estimators, GAE, PPO losses, KL controllers, critic loss,
                GRPO / RLOO / batch baselines
preference.py   Bradley-Terry, Davidson ties, Plackett-Luce, DPO / cDPO / IPO / hinge, KTO, ORPO, SimPO,
                ECE, Fleiss' kappa
pg_variants.py  GSPO's sequence ratio, loss and token ratio, DAPO's dynamic sampling and overlong penalty, REINFORCE++
trust_region.py flat gradients, Hessian-vector products, conjugate gradient, the TRPO step
surrogates.py   TRPO's importance-sampled surrogate, the REINFORCE loss (RLOO)
lm.py           the next-token (pretraining / SFT) loss
best_of_n.py    the best-of-n policy: exact distribution and KL on a finite outcome set, log n - (n-1)/n
stats.py        masked sums, means, variances, whitening, explained variance
"""

from .policy import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    AdaptiveKLController,
    AdaptiveKLPenalty,
    FixedKLController,
    aggregate_loss,
    batch_normalized_advantages,
    broadcast_to_tokens,
    entropy_from_logits,
    gae,
    group_advantages,
    grpo_kl_penalty,
    kl_estimate,
    kl_from_logits,
    logprobs_from_logits,
    ppo_penalty_loss,
    ppo_policy_loss,
    rloo_advantages,
    value_loss,
)
from .preference import (
    DPO_LOSS_TYPES,
    bradley_terry_logit,
    bradley_terry_loss,
    bradley_terry_prob,
    davidson_log_probs,
    davidson_probs,
    davidson_tie_loss,
    dpo_loss,
    expected_calibration_error,
    fleiss_kappa,
    kto_loss,
    kto_reference_point,
    orpo_log_odds,
    orpo_loss,
    plackett_luce_logprob,
    plackett_luce_loss,
    simpo_loss,
)
from .pg_variants import (
    gspo_policy_loss,
    gspo_sequence_ratio,
    gspo_token_ratio,
    nonconstant_groups,
    overlong_penalty,
    reinforce_pp_advantages,
)
from .best_of_n import best_of_n_distribution, best_of_n_kl, best_of_n_kl_bound, best_of_n_subset_mean
from .lm import next_token_loss
from .rlhf import kl_penalized_rewards, last_valid_index
from .stats import explained_variance, masked_mean, masked_sum, masked_var, whiten
from .surrogates import reinforce_loss, trpo_surrogate
from .trust_region import (
    conjugate_gradient,
    flat_grad,
    flat_params,
    hessian_vector_product,
    make_hvp,
    set_flat_params,
    trpo_step,
)

__all__ = [
    # lm
    "next_token_loss", "kl_penalized_rewards", "last_valid_index",
    # stats
    "masked_sum", "masked_mean", "masked_var", "whiten", "explained_variance",
    # policy
    "logprobs_from_logits", "entropy_from_logits", "kl_from_logits",
    "KL_ESTIMATORS", "kl_estimate", "grpo_kl_penalty", "gae",
    "LOSS_AGGREGATIONS", "aggregate_loss", "ppo_policy_loss", "ppo_penalty_loss",
    "AdaptiveKLPenalty", "AdaptiveKLController", "FixedKLController", "value_loss",
    "group_advantages", "rloo_advantages", "batch_normalized_advantages", "broadcast_to_tokens",
    # preference
    "bradley_terry_logit", "bradley_terry_prob", "bradley_terry_loss",
    "davidson_log_probs", "davidson_probs", "davidson_tie_loss",
    "plackett_luce_logprob", "plackett_luce_loss",
    "DPO_LOSS_TYPES", "dpo_loss", "expected_calibration_error", "fleiss_kappa",
    "kto_reference_point", "kto_loss", "orpo_log_odds", "orpo_loss", "simpo_loss",
    # policy-gradient variants
    "gspo_sequence_ratio", "gspo_policy_loss", "gspo_token_ratio", "nonconstant_groups", "overlong_penalty", "reinforce_pp_advantages",
    # trust region
    "flat_grad", "flat_params", "set_flat_params", "make_hvp", "hessian_vector_product",
    "conjugate_gradient", "trpo_step",
    # surrogates
    "trpo_surrogate", "reinforce_loss",
    # best-of-n
    "best_of_n_kl_bound", "best_of_n_distribution", "best_of_n_kl", "best_of_n_subset_mean",
]
