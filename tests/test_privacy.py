"""Privacy: accountants vs dp-accounting, DP-SGD steps, ledger, client-level DP, budget, audits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import sandbox
from sandbox.core.privacy import Mechanism, PrivacyLedger, epsilon
from sandbox.core.privacy import audit as audit_maths

FRAMEWORKS = ["torch", "keras"]


def dp_overrides(**extra):
    """Sample-level DP-SGD on the small federation (MLP, no dropout)."""
    return {"privacy.sample.enabled": True, "privacy.sample.noise_multiplier": 1.0,
            "train.batch_size": 16, "train.local_epochs": 1, "train.lr": 0.1,
            "train.momentum": 0.0, **extra}


# -- accountants ----------------------------------------------------------------------------
@pytest.mark.parametrize("q,sigma,steps", __import__("benchmarks.crosscheck",
                                                      fromlist=["GRID"]).GRID)
def test_accountants_match_dp_accounting(q, sigma, steps):
    """Acceptance grid: RDP within 2 % of dp-accounting, PRV within 5 % of its PLD.

    At the same fractional orders dp-accounting's series for q=0.1, σ≤1.1 over-estimates
    (see test_fractional_order_rdp_is_exact); with integer orders, where both compute the
    closed form, they agree everywhere. The table is docs/privacy.md.
    """
    from benchmarks.crosscheck import crosscheck_row

    row = crosscheck_row(q, sigma, steps)
    assert row["rdp_int_rel"] <= 0.02
    assert row["prv_rel"] <= 0.05
    if row["ours_rdp"] <= 40:
        assert row["rdp_rel"] <= 0.02
    else:
        assert row["ours_rdp"] <= row["google_rdp"] * 1.0001  # ours tighter, never looser


@pytest.mark.parametrize("alpha", [1.75, 2.5, 2.9, 7.3])
def test_fractional_order_rdp_is_exact(alpha):
    """Opacus' RDP of the subsampled Gaussian equals the defining integral (q=0.1, σ=0.8)."""
    from opacus.accountants.analysis.rdp import compute_rdp
    from scipy import integrate, stats

    q, s = 0.1, 0.8

    def integrand(z):
        return stats.norm.pdf(z, 0, s) * ((1 - q) + q * np.exp((2 * z - 1) / (2 * s * s))) ** alpha

    value, _ = integrate.quad(integrand, -50, 50, limit=500)
    assert compute_rdp(q=q, noise_multiplier=s, steps=1, orders=[alpha])[0] == pytest.approx(
        math.log(value) / (alpha - 1), rel=1e-6)


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    assert epsilon([(1.0, 0.01, 100)], 1e-5) < epsilon([(1.0, 0.01, 1000)], 1e-5)
    assert epsilon([(2.0, 0.01, 1000)], 1e-5) < epsilon([(1.0, 0.01, 1000)], 1e-5)
    # Composition is order-free and split histories equal the merged one.
    split = epsilon([(1.0, 0.01, 400), (1.0, 0.01, 600)], 1e-5, "prv")
    assert split == pytest.approx(epsilon([(1.0, 0.01, 1000)], 1e-5, "prv"))


@pytest.mark.parametrize("sample_rate,steps", [(0.18, 60), (0.05, 500), (0.01, 10000)])
def test_target_epsilon_calibration_never_overshoots_the_ledger(sample_rate, steps):
    """σ from target_epsilon, accounted by the ledger's own accountant: ε ≤ target."""
    from sandbox.core.privacy import noise_for_target

    for target in (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0):
        sigma = noise_for_target(target_epsilon=target, delta=1e-5, sample_rate=sample_rate,
                                 steps=steps)
        spent = epsilon([(sigma, sample_rate, steps)], 1e-5)
        assert 0.99 * target <= spent <= target, (target, sigma, spent)


# -- ledger ---------------------------------------------------------------------------------
def test_ledger_composes_runs_on_the_same_data_only():
    def run(source, rounds):
        ledger = PrivacyLedger(delta=1e-5, data_fingerprint="abc")
        for r in range(1, rounds + 1):
            ledger.add(Mechanism("client-0", "dp-sgd", r, 1.1, 0.05, 20, source))
        return ledger

    merged = PrivacyLedger.compose([run("trial-1", 5), run("trial-2", 5)])
    report = merged.report()["scopes"]["client-0"]
    assert report["rdp"] == pytest.approx(epsilon([(1.1, 0.05, 200)], 1e-5))
    assert report["rdp"] < report["naive_sum_rdp"]  # composition beats adding ε
    assert "sequential composition" in merged.report()["composition"]
    other = run("trial-3", 1)
    other.data_fingerprint = "xyz"
    with pytest.raises(ValueError, match="different data"):
        PrivacyLedger.compose([merged, other])
    assert PrivacyLedger.from_json(json.loads(json.dumps(merged.to_json()))).mechanisms == \
        merged.mechanisms


# -- DP-SGD steps ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_dp():
    from clients.trainer import get_trainer
    from sandbox.core.config import ModelConfig, TrainConfig
    from sandbox.core.models import ModelSpec

    spec = ModelSpec.from_config(ModelConfig(arch="cnn", channels=[4], hidden=[16]),
                                 (8, 8, 1), 10)
    trainer = get_trainer("keras", spec, TrainConfig(batch_size=8), private=True)
    trainer.set_weights(spec.init_weights(0))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 1)).astype(np.float32)
    x[3] *= 100.0  # one example with a huge gradient
    return trainer, x, rng.integers(0, 10, 8)


def test_keras_per_example_clipping_bounds_each_contribution(keras_dp):
    import tensorflow as tf

    trainer, x, y = keras_dp

    def norm_of(mask, clip):
        sums, _ = trainer.clipped_gradient_sum(x, y, mask, tf.constant(clip))
        return math.sqrt(sum(float(tf.reduce_sum(g * g)) for g in sums))

    masks = np.eye(len(y), dtype=np.float32)
    raw = [norm_of(mask, 1e9) for mask in masks]
    clip = float(np.median(raw))  # half the examples get clipped, half do not
    for mask, unclipped in zip(masks, raw, strict=True):
        norm = norm_of(mask, clip)
        assert norm <= clip * (1 + 1e-4)
        assert norm == pytest.approx(min(unclipped, clip), rel=1e-3)
    # The whole batch: the sum of clipped gradients is bounded by len(batch) * clip and
    # the outlier (x[3] scaled by 100) contributes no more than any other example.
    assert norm_of(np.ones(len(y), np.float32), clip) <= len(y) * clip * (1 + 1e-4)
    assert max(raw) > 50 * clip


def test_keras_noise_has_configured_scale(keras_dp):
    import tensorflow as tf

    trainer, x, y = keras_dp
    noise_std, clip, batch = 1.3 * 0.5, 0.5, 8.0
    grads, _ = trainer.noisy_gradient(
        x, y, tf.zeros(len(y)), tf.constant(noise_std), tf.constant(clip),
        tf.constant(batch), tf.constant(7, tf.int64))
    values = np.concatenate([g.numpy().ravel() for g in grads])  # pure noise / batch
    assert values.size > 1000
    assert values.std() == pytest.approx(noise_std / batch, rel=0.05)
    assert abs(values.mean()) < 4 * noise_std / batch / math.sqrt(values.size)


def test_torch_and_keras_dp_steps_agree_without_noise():
    """Same weights, batch and clipping, σ=0: Opacus' step equals our Keras step."""
    from clients.trainer import get_trainer
    from sandbox.core.config import ModelConfig, TrainConfig
    from sandbox.core.models import ModelSpec
    from sandbox.core.privacy import SampleDPPlan

    spec = ModelSpec.from_config(ModelConfig(arch="mlp", hidden=[16]), (8, 8, 1), 10)
    train = TrainConfig(batch_size=6, lr=0.5)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 8, 8, 1)).astype(np.float32) * 3
    y = rng.integers(0, 10, 12)
    schedule = np.array([[0, 3, 5, 7, 11, -1], [2, 4, 6, -1, -1, -1], [-1] * 6])
    plan = SampleDPPlan(0.0, 0.3, 0.5, 6, 3, True)
    weights = {}
    for framework in FRAMEWORKS:
        trainer = get_trainer(framework, spec, train, private=True)
        trainer.set_weights(spec.init_weights(3))
        trainer.fit(x, y, schedule, seed=0, dp=plan)
        weights[framework] = trainer.get_weights()
    for a, b in zip(weights["torch"], weights["keras"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# -- runs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sample_dp_accountant_persists_across_rounds(small, framework):
    result = sandbox.run(small(framework=framework, **dp_overrides()))
    privacy = json.loads((result.run_dir / "privacy.json").read_text())
    ledger = PrivacyLedger.from_json(privacy["ledger"])
    for pid, reported in privacy["client_reported_epsilon"].items():
        scope = f"client-{pid}"
        per_round = [e for _, e in ledger.per_round(scope, "rdp")]
        assert len(per_round) == 3 and per_round[0] < per_round[1] < per_round[2]
        assert reported == pytest.approx(per_round[-1], rel=1e-9)  # node's own accountant
    eps_max = result.metric("eps_client_max")
    assert len(eps_max) == 3 and eps_max == sorted(eps_max)
    per_round = privacy["epsilon_per_round"]
    assert max(per_round[s][-1][1] for s in per_round) == pytest.approx(eps_max[-1])
    assert (result.run_dir / "privacy.png").is_file()


def test_seeded_dp_runs_are_reproducible(small):
    cfg = small(**dp_overrides(**{"privacy.noise": "seeded"}))
    assert sandbox.run(cfg).rounds[-1]["central_test_accuracy"] == \
        sandbox.run(cfg).rounds[-1]["central_test_accuracy"]


def test_target_epsilon_is_reached_after_all_rounds(small):
    result = sandbox.run(small(**dp_overrides(**{"privacy.sample.target_epsilon": 3.0})))
    scopes = result.privacy["scopes"]
    assert all(v["rdp"] == pytest.approx(3.0, rel=0.01) for v in scopes.values())


@pytest.mark.parametrize("mode", ["server_fixed", "client_fixed", "server_adaptive",
                                  "client_adaptive"])
def test_client_level_dp_reports_epsilon_per_round(small, mode):
    import dp_accounting
    from dp_accounting import rdp

    cfg = small(framework="keras" if "adaptive" in mode else "torch", **{
        "privacy.client.mode": mode, "privacy.client.noise_multiplier": 0.8,
        "privacy.client.clipped_count_stddev": 1.0, "federation.fraction_train": 0.5})
    result = sandbox.run(cfg)
    eps = result.metric("eps_federation")
    assert len(eps) == 3
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(0.8)), 3)
    google = rdp.RdpAccountant(list(sandbox.core.privacy.RDP_ORDERS))
    google.compose(event)
    assert eps[-1] == pytest.approx(google.get_epsilon(1e-5), rel=0.02)
    # Client-side clipping mods act on training replies only: evaluation still runs.
    assert all(row["fed_val_accuracy"] is not None for row in result.rounds[1:]), mode
    # privacy.json says what ε rests on: Poisson sampling with q = 0.5, the accounted rate.
    stated = json.loads((result.run_dir / "privacy.json").read_text())["assumptions"]
    assert stated["client_level_upper_bound"] is True and "Poisson" in stated[
        "client_level_sampling"]
    assert "Renyi" in stated["accountant"] and "os.urandom" in stated["noise_source"]


def test_client_dp_wraps_a_real_flower_strategy(small):
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAdam

    from sandbox.engine.server import build_accounted_strategy
    from strategies.client_dp import ClientLevelDP

    dp = build_accounted_strategy(small(**{
        "federation.strategy": "fedadam", "privacy.client.mode": "client_adaptive",
        "privacy.client.clipped_count_stddev": 1.0}), ArrayRecord()).strategy
    assert isinstance(dp, ClientLevelDP) and dp.clients_clip
    assert isinstance(dp.strategy, FedAdam) and dp.strategy.weighted_by_key == "unit-weight"
    assert dp.plan.update_noise_multiplier == pytest.approx((1 - 0.25) ** -0.5)  # z = σ_b = 1


def test_budget_stops_before_the_exceeding_round(small):
    cfg = small(rounds=10, **dp_overrides(**{"privacy.budget_epsilon": 6.0}))
    result = sandbox.run(cfg)
    stop = result.stopped_early
    assert result.stop_reason is sandbox.StopReason.BUDGET
    assert stop is not None and result.rounds[-1]["round"] == stop.before_round - 1 < 10
    assert stop.projected_epsilon > 6.0
    assert max(v["rdp"] for v in result.privacy["scopes"].values()) <= 6.0
    assert result.epsilon == max(v["rdp"] for v in result.privacy["scopes"].values())
    run_info = json.loads((result.run_dir / "run.json").read_text())
    assert run_info["stop_reason"] == "budget" and run_info["epsilon"] == result.epsilon
    assert not result.run_dir.name.endswith(".failed")
    saved = np.load(result.run_dir / "weights.npz")
    assert len(saved.files) > 0
    ledger = json.loads((result.run_dir / "privacy.json").read_text())["ledger"]
    assert max(m["round"] for m in ledger["mechanisms"]) == stop.before_round - 1


# -- audits ---------------------------------------------------------------------------------
def test_auc_and_tpr_against_references():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.5, 1, 300), rng.normal(0, 1, 400)
    labels = np.r_[np.ones(300), np.zeros(400)]
    assert audit_maths.roc_auc(members, nonmembers) == pytest.approx(
        roc_auc_score(labels, np.r_[members, nonmembers]))
    assert audit_maths.tpr_at_fpr(members, nonmembers, 1.0) == 1.0
    assert audit_maths.tpr_at_fpr(np.ones(5), np.zeros(5), 0.0) == 1.0


def test_one_run_bound_is_zero_for_guessing_and_grows_with_correct_guesses():
    bound = audit_maths.one_run_epsilon_lower_bound
    assert bound(1000, 100, 50, delta=1e-5, confidence=0.95) == 0.0
    low = bound(1000, 100, 70, delta=1e-5, confidence=0.95)
    high = bound(1000, 100, 90, delta=1e-5, confidence=0.95)
    assert 0 < low < high
    # δ = 0: the bound inverts the one-sided Clopper–Pearson bound on the guess accuracy.
    p_low, _ = audit_maths.clopper_pearson(90, 100, 0.90)
    assert bound(100, 100, 90, delta=0.0, confidence=0.95) == pytest.approx(
        math.log(p_low / (1 - p_low)), rel=1e-3)


OVERFIT = {"data.dataset": "mnist1d", "data.num_samples": 2000, "data.num_clients": 2,
           "data.partitioner": "iid", "data.global_test_fraction": 0.5, "model.hidden": [256],
           "train.local_epochs": 5, "train.momentum": 0.0, "train.lr": 0.1, "rounds": 10,
           "privacy.audit.membership": True, "privacy.audit.canaries": 64}


def test_audit_detects_leakage_of_a_non_dp_overfit_run(small):
    result = sandbox.run(small(**OVERFIT))
    report = result.privacy["audit"]
    assert report["membership_inference"]["loss_threshold"]["auc"] > 0.7
    assert report["canaries"]["auc_included_vs_excluded"] > 0.9
    assert report["canaries"]["epsilon_lower_bound"] > 1.0


def test_audit_lower_bound_stays_below_theoretical_epsilon(small):
    cfg = small(**{**OVERFIT, **dp_overrides(), "train.local_epochs": 2, "rounds": 5,
                   "privacy.sample.noise_multiplier": 0.8})
    result = sandbox.run(cfg)
    canary = result.privacy["audit"]["canaries"]
    theoretical = result.privacy["scopes"][f"client-{canary['client']}"]["rdp"]
    assert 0 <= canary["epsilon_lower_bound"] <= theoretical
    assert result.privacy["audit"]["membership_inference"]["loss_threshold"]["auc"] < 0.6


# -- config errors --------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,needle", [
    ({"privacy.budget_epsilon": 1.0}, "privacy.budget_epsilon needs a DP mechanism"),
    ({"privacy.client.mode": "server_fixed", "federation.strategy": "fedmedian"},
     "federation.strategy 'fedmedian' is not one"),
    ({"privacy.client.mode": "server_adaptive"}, "privacy.client.clipped_count_stddev >"),
    ({"privacy.audit.canaries": 10, "privacy.audit.canary_client": 9},
     "privacy.audit.canary_client=9 is not a client"),
    ({"privacy.sample.enabled": True, "model.dropout": 0.2}, "model.dropout = 0"),
    ({"privacy.client.mode": "local"}, "privacy.client.mode"),
])
def test_privacy_config_errors_name_the_key(small, overrides, needle):
    with pytest.raises(sandbox.ConfigError, match=needle.replace("(", r"\(").replace(
            ")", r"\)").replace("+", r"\+")):
        small(**overrides)


MODEL_FAMILIES = [("mlp", (12, 1), 3), ("cnn", (8, 8, 1), 3), ("cnn", (8, 8, 2), 4),
                  ("cnn", (8, 8, 1), 2), ("cnn", (20, 1), 4), ("cnn", (20, 2), 3)]


@pytest.mark.parametrize("arch,shape,kernel", MODEL_FAMILIES)
def test_torch_per_example_gradients_equal_per_sample_backprop(arch, shape, kernel):
    """Opacus' per-example gradients on our modules equal one backward pass per sample."""
    import torch
    from opacus import GradSampleModule

    from clients.torch_trainer import build_module
    from sandbox.core.config import ModelConfig
    from sandbox.core.models import ModelSpec

    spec = ModelSpec.from_config(ModelConfig(arch=arch, channels=[4, 3], hidden=[8],
                                             kernel_size=kernel), shape, 5)
    module = build_module(spec, spec.init_weights(1))
    reference = build_module(spec, spec.init_weights(1))
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((6, *shape), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 5, 6))
    sampled = GradSampleModule(module, loss_reduction="sum")
    torch.nn.functional.cross_entropy(sampled(x), y, reduction="sum").backward()
    for i in range(6):
        reference.zero_grad()
        torch.nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1],
                                          reduction="sum").backward()
        for ours, ref in zip(module.parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(ours.grad_sample[i].numpy(), ref.grad.numpy(),
                                       atol=1e-5)


@pytest.mark.parametrize("arch,shape,kernel", MODEL_FAMILIES)
def test_keras_layerwise_per_example_gradients_are_exact(arch, shape, kernel):
    """clients.keras_dp's one-pass gradients equal per-example tapes; ghost norms agree."""
    import tensorflow as tf

    from clients.keras_dp import clipped_gradient_sum, per_example_gradients
    from clients.keras_trainer import build_model
    from sandbox.core.config import ModelConfig
    from sandbox.core.models import ModelSpec

    spec = ModelSpec.from_config(ModelConfig(arch=arch, channels=[4, 3], hidden=[8],
                                             kernel_size=kernel), shape, 5)
    model = build_model(spec, spec.init_weights(1))
    rng = np.random.default_rng(2)
    x = tf.constant(rng.random((6, *shape), dtype=np.float32))
    y = tf.constant(rng.integers(0, 5, 6))
    losses, grads = per_example_gradients(model, x, y)
    for i in range(6):
        with tf.GradientTape() as tape:
            logits = model(x[i : i + 1])
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[i : i + 1],
                                                                  logits=logits)[0]
        reference = tape.gradient(loss, model.trainable_variables)
        assert float(losses[i]) == pytest.approx(float(loss), abs=1e-5)
        for ours, ref in zip(grads, reference, strict=True):
            np.testing.assert_allclose(ours[i].numpy(), ref.numpy(), atol=1e-5)
    norms = np.sqrt(sum(np.square(g.numpy()).reshape(6, -1).sum(1) for g in grads))
    clip = float(np.median(norms))
    factors = np.minimum(1.0, clip / (norms + 1e-6)).astype(np.float32)
    _, sums = clipped_gradient_sum(model, x, y, tf.ones(6), tf.constant(clip))
    for total, g in zip(sums, grads, strict=True):
        np.testing.assert_allclose(total.numpy(), np.tensordot(factors, g.numpy(), 1),
                                   rtol=1e-4, atol=1e-5)


def test_absurdly_small_noise_reports_the_rdp_bound_instead_of_exhausting_memory():
    from sandbox.core.privacy.accounting import PRV_MAX_EPSILON

    rdp = epsilon([(1e-6, 0.5, 10)], 1e-5, "rdp")
    assert rdp > PRV_MAX_EPSILON and epsilon([(1e-6, 0.5, 10)], 1e-5, "prv") == rdp
