"""`minirlhf verify`: every row passes on the real objectives, and the report can fail.

The report's rows compare minirlhf.objectives against closed forms; here we check that (1) the
whole suite passes, (2) a deliberately wrong objective (monkeypatched into minirlhf.verify, where
the rows look their functions up) turns exactly the rows that depend on it into FAILs, and (3)
the comparison rules, the tolerance scale, the table, the JSON file and the exit code do what the
module's docstring says.
"""

import json
import math
import re

import pytest
import torch

import minirlhf.verify as V
from minirlhf.cli import main as cli_main


@pytest.fixture(scope="module")
def results():
    return V.run_checks(seed=0)


def test_every_row_passes(results):
    failed = [r for r in results if not r.passed]
    assert not failed, "\n" + V.format_table(results)


def test_the_rows_cover_every_algorithm_and_estimator(results):
    names = {r.name for r in results}
    required = {
        "gae/hand-example", "gae/lambda1-gamma1", "gae/lambda0-td-error",
        "kl/k1-unbiased", "kl/k3-unbiased", "kl/k2-bias", "kl/abs-bias", "kl/k1-variance", "kl/k2-variance",
        "kl/k3-variance", "kl/abs-variance", "kl/k3-nonnegative",
        "ppo/clip-zero-grad", "bandit/ppo-kl-in-reward",
        "dpo/bandit-optimum", "dpo/log2-at-reference", "dpo/ipo-formula", "dpo/hinge-formula",
        "bt/log2-at-equal-rewards", "bt/soft-label-optimum", "bt/plackett-luce-k2-is-bt",
        "bt/plackett-luce-sums-to-1", "bt/davidson-sums-to-1",
        "trpo/cg-vs-solve", "trpo/cg-exact-in-n-steps", "trpo/hvp-vs-hessian", "trpo/fisher-is-kl-hessian",
        "trpo/natural-gradient-step", "trpo/kl-within-delta",
        "grpo/group-mean-zero", "grpo/k3-grad-is-reverse-kl", "grpo/rloo-identity",
    }
    assert required <= names, sorted(required - names)
    assert len(names) == len(results)  # names are unique
    assert {r.name.split("/")[0] for r in results} == set(V.GROUPS)


def test_every_row_documents_its_formula_and_source():
    for c in V.CHECKS:
        assert c.claim and c.doc, c.name
        assert re.search(r"\b(19|20)\d\d\b", c.doc), f"{c.name}: the docstring names no paper (author, year)"
        assert c.compare in V.COMPARES


def test_k2_and_abs_biases_are_reported_nonzero(results):
    # the report states the biased estimators' exact bias, not just that they pass
    by_name = {r.name: r for r in results}
    assert by_name["kl/k2-bias"].measured == pytest.approx(0.2232, abs=1e-4)
    assert by_name["kl/abs-bias"].measured == pytest.approx(math.log(9 / 5), abs=1e-12)
    assert by_name["kl/k3-variance"].measured < by_name["kl/k1-variance"].measured / 10


# ----------------------------------------------------------------------------- the report can fail


def _failed(only, **kw):
    return {r.name for r in V.run_checks(only=only, **kw) if not r.passed}


def test_gae_with_the_wrong_sign_fails_every_gae_row(monkeypatch):
    real = V.gae

    def wrong_sign(rewards, values, mask, gamma, lam):
        adv, ret = real(rewards, values, mask, gamma, lam)
        return -adv, ret

    monkeypatch.setattr(V, "gae", wrong_sign)
    gae_rows = {c.name for c in V.CHECKS if c.name.startswith("gae/")}
    assert _failed(["gae/"]) == gae_rows


def test_gae_off_by_one_discount_fails(monkeypatch):
    real = V.gae
    monkeypatch.setattr(V, "gae", lambda r, v, m, gamma, lam: real(r, v, m, gamma, min(1.0, lam * 1.01)))
    failed = _failed(["gae/"])
    assert "gae/hand-example" in failed and "gae/sparse-terminal" in failed
    assert "gae/lambda0-td-error" not in failed  # lam = 0 stays 0: that row cannot see this bug


def test_a_wrong_k3_fails_the_k3_rows_only(monkeypatch):
    real = V.kl_estimate

    def k3_with_a_sign_slip(logp, ref_logp, kind):  # (r - 1) + log r instead of (r - 1) - log r
        if kind == "k3":
            log_r = ref_logp - logp
            return torch.expm1(log_r) + log_r
        return real(logp, ref_logp, kind)

    monkeypatch.setattr(V, "kl_estimate", k3_with_a_sign_slip)
    assert _failed(["kl/"]) == {"kl/k3-unbiased", "kl/k3-variance", "kl/k3-nonnegative"}


def test_ipo_with_the_wrong_target_margin_fails(monkeypatch):
    real = V.dpo_loss

    def ipo_margin_1_over_beta(*args, loss_type="sigmoid", beta=0.1, **kw):
        losses, cr, rr = real(*args, loss_type=loss_type, beta=beta, **kw)
        if loss_type == "ipo":  # (h - 1/beta)^2 instead of (h - 1/(2 beta))^2
            h = (args[0] - args[2]) - (args[1] - args[3])
            losses = (h - 1.0 / beta) ** 2
        return losses, cr, rr

    monkeypatch.setattr(V, "dpo_loss", ipo_margin_1_over_beta)
    assert _failed(["dpo/"]) == {"dpo/ipo-formula"}


def test_a_ppo_loss_without_the_clip_fails_the_clip_rows(monkeypatch):
    real = V.ppo_policy_loss
    monkeypatch.setattr(V, "ppo_policy_loss", lambda *a, **kw: real(*a, **{**kw, "clip_eps": 100.0}))
    failed = _failed(["ppo/clip"])
    assert failed == {"ppo/clip-zero-grad", "ppo/clipfrac"}


def test_grpo_penalty_swapped_for_k2_fails_the_reverse_kl_rows(monkeypatch):
    # if someone "fixed" the GRPO term to have the forward-KL gradient, the documented finding rows flag it
    monkeypatch.setattr(V, "grpo_kl_penalty", lambda logp, ref: V.kl_estimate(logp, ref, "k2"))
    failed = _failed(["grpo/k3", "bandit/grpo-k3"])
    assert failed == {"grpo/k3-grad-is-reverse-kl", "grpo/k3-grad-not-forward-kl", "bandit/grpo-k3-fixed-point",
                      "bandit/grpo-k3-by-hand"}


def test_kto_with_the_undesirable_sign_flipped_fails_the_kto_rows(monkeypatch):
    real = V.kto_loss

    def all_desirable(policy_logps, ref_logps, desirable, kl_ref, *a, **kw):  # ignores the labels
        return real(policy_logps, ref_logps, torch.ones_like(desirable), kl_ref, *a, **kw)

    monkeypatch.setattr(V, "kto_loss", all_desirable)
    assert _failed(["kto/"]) == {"kto/half-lambda-at-reference", "kto/grad-at-reference", "kto/formula"}


def test_clip_higher_ignored_fails_its_row(monkeypatch):
    real = V.ppo_policy_loss
    monkeypatch.setattr(V, "ppo_policy_loss", lambda *a, clip_eps_high=None, **kw: real(*a, **kw))
    assert _failed(["dapo/clip"]) == {"dapo/clip-higher-set"}


def test_gspo_without_length_normalisation_fails_the_gspo_rows(monkeypatch):
    monkeypatch.setattr(V, "gspo_sequence_ratio", lambda logp, old, mask: torch.exp(((logp - old) * mask).sum(-1)))

    def token_sum_ratio(logp, old_logp, adv, mask, lo, hi):  # clip the unnormalised sequence ratio
        s = torch.exp(((logp - old_logp) * mask).sum(-1))
        return -torch.minimum(s * adv, s.clamp(1 - lo, 1 + hi) * adv).mean(), {}

    monkeypatch.setattr(V, "gspo_policy_loss", token_sum_ratio)
    assert _failed(["gspo/"]) == {"gspo/one-token-ratio", "gspo/grad-vs-written-out"}


def test_simpo_and_orpo_rows_catch_missing_normalisations(monkeypatch):
    real_simpo = V.simpo_loss
    monkeypatch.setattr(V, "simpo_loss", lambda cw, cl, lw, ll, *a, **kw: real_simpo(cw, cl, 1.0, 1.0, *a, **kw))
    assert _failed(["simpo/"]) == {"simpo/formula", "simpo/length-normalised"}
    # ORPO with log P instead of log odds (no - log(1 - P)): the odds ratio row fails
    monkeypatch.setattr(V, "orpo_loss", lambda c, r, nll, lam: (None, -torch.nn.functional.logsigmoid(c - r), None))
    assert _failed(["orpo/odds"]) == {"orpo/odds-ratio-enumerated"}


def test_trpo_step_that_overshoots_the_trust_region_fails(monkeypatch):
    real = V.trpo_step
    monkeypatch.setattr(V, "trpo_step", lambda params, s, k, max_kl, **kw: real(params, s, k, 4 * max_kl, **kw))
    assert "trpo/kl-within-delta" in _failed(["trpo/kl-within-delta"])


def test_cg_stopping_early_fails(monkeypatch):
    real = V.conjugate_gradient
    monkeypatch.setattr(V, "conjugate_gradient", lambda Avp, b, iters=10, **kw: real(Avp, b, iters=2, **kw))
    assert _failed(["trpo/cg"]) == {"trpo/cg-vs-solve", "trpo/cg-exact-in-n-steps"}


# ----------------------------------------------------------------------------- comparison rules


def _row(compare, measured, expected, tol, tol_scale=1.0):
    c = V.Check("gae/test-row", "a synthetic row", lambda seed: (measured, expected, tol), compare)
    return V.run_check(c, tol_scale=tol_scale)


def test_compare_rules_and_tolerance_scale():
    assert _row("==", 1.0, 1.0 + 5e-13, 1e-12).passed
    assert not _row("==", 1.0, 1.0 + 2e-12, 1e-12).passed
    assert _row("==", 1.0, 1.0 + 2e-12, 1e-12, tol_scale=10).passed
    r = _row("<=", 1.3, 1.0, 0.0)
    assert not r.passed and r.error == pytest.approx(0.3)
    assert _row("<=", 0.7, 1.0, 0.0).passed and _row("<=", 0.7, 1.0, 0.0).error == 0.0
    assert not _row(">=", 0.7, 1.0, 0.0).passed
    assert _row(">=", 1.3, 1.0, 0.0).passed
    for compare in V.COMPARES:  # nan never passes
        assert not _row(compare, math.nan, 0.0, 1.0).passed
    with pytest.raises(ValueError, match="tol_scale"):
        V.run_checks(only=["gae/hand"], tol_scale=0.0)


def test_a_row_that_raises_is_a_failed_row_with_the_message():
    def broken(seed):
        raise RuntimeError("shape mismatch in the objective")

    r = V.run_check(V.Check("gae/raises", "raises", broken))
    assert not r.passed and "RuntimeError: shape mismatch" in r.message
    table = V.format_table([r])
    assert "FAIL" in table and "raised RuntimeError" in table and "0/1 rows pass" in table


def test_only_filter_and_unknown_filter():
    names = [c.name for c in V.select_checks(["kl/k1", "dpo/*-formula"])]
    assert names == ["kl/k1-unbiased", "kl/k1-variance", "dpo/sigmoid-formula", "dpo/ipo-formula", "dpo/hinge-formula"]
    with pytest.raises(ValueError, match=r"only: no check matches \['nope'\]"):
        V.select_checks(["nope"])


def test_table_columns_and_summary():
    table = V.format_table(V.run_checks(only=["bt/"]))
    header = table.splitlines()[0].split()
    assert header == ["check", "measured", "expected", "error", "tolerance", "pass"]
    assert "# Bradley & Terry (1952)" in table
    assert re.search(r"^bt/soft-label-optimum\s+1\.7346\s+1\.7346\s+\S+\s+1\.0e-10\s+PASS", table, re.M)
    assert "6/6 rows pass" in table


# ----------------------------------------------------------------------------- the command


def test_cli_writes_json_and_exits_0(tmp_path, capsys):
    out = tmp_path / "verify.json"
    assert cli_main(["verify", "--only", "gae", "bt/davidson", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["n_failed"] == 0 and data["n_rows"] == 7
    row = data["rows"][0]
    assert row["name"] == "gae/hand-example" and row["passed"] is True and "Schulman" in row["source"]
    assert "7/7 rows pass" in capsys.readouterr().out


def test_cli_exits_1_when_a_row_fails(tmp_path, monkeypatch, capsys):
    real = V.gae
    monkeypatch.setattr(V, "gae", lambda *a, **kw: tuple(-x for x in real(*a, **kw)))
    out = tmp_path / "verify.json"
    with pytest.raises(SystemExit) as exc:
        cli_main(["verify", "--only", "gae/", "--json", str(out), "--explain"])
    assert exc.value.code == 1
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "0/5 rows pass" in printed
    assert "delta_t = r_t + gamma V(s_t+1) - V(s_t)" in printed  # --explain prints the formulas
    assert json.loads(out.read_text())["passed"] is False


# ----------------------------------------------------------------------------- --trainers


def test_cli_trainers_runs_a_trainer_row_and_writes_it(tmp_path, capsys):
    out = tmp_path / "verify.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["verify", "--trainers", "--only", "trainer/rloo", "--json", str(out),
                         "--trainers-dir", str(tmp_path / "runs")]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["n_rows"] == 0  # no objective row is named trainer/rloo
    (row,) = data["trainers"]
    assert row["name"] == "trainer/rloo" and row["passed"] and row["tv"] <= row["bound"]
    assert set(row["per_prompt"]) == {"0:", "1:", "2:"}
    printed = capsys.readouterr().out
    assert re.search(r"^trainer/rloo\s+pi_ref exp\(r/beta\)/Z\s+0\.0\d+\s+0\.0\d+\s+PASS", printed, re.M)
    assert "1/1 trainers pass" in printed


def test_cli_trainers_exits_1_when_a_trainer_misses_its_target(tmp_path, monkeypatch, capsys):
    import minirlhf.verify_trainers as T

    monkeypatch.setattr(T, "build_reference", lambda out: tmp_path / "ref")
    monkeypatch.setattr(T, "run_trainer_row", lambda row, ref, work: T.TrainerResult(
        row.name, row.target, 0.3, 0.05, False, 0.0, bound_why=row.bound_why))
    with pytest.raises(SystemExit) as exc:
        cli_main(["verify", "--trainers", "--only", "gae/hand", "trainer/ppo-critic-free"])
    assert exc.value.code == 1
    printed = capsys.readouterr().out
    assert "1/1 rows pass" in printed  # the objective row still passes
    assert re.search(r"^trainer/ppo-critic-free\s.*0\.3000\s+0\.0500\s+FAIL", printed, re.M)
    assert "0/1 trainers pass, 1 FAIL: trainer/ppo-critic-free" in printed
    assert cli_main(["verify", "--trainers", "--only", "nothing-is-called-this"]) == 1  # one line, no traceback
    err = capsys.readouterr().err
    assert "no check or trainer row" in err and "Traceback" not in err
