"""Empirical privacy audits: membership inference and one-run canary auditing.

Pure numpy/scipy; the caller supplies model outputs (logits) for the examples.

* Loss-threshold membership inference (Yeom et al. 2018) and the shadow-free
  modified-entropy attack (Song & Mittal 2021): score every example, compare train
  members with held-out non-members; AUC and TPR at low FPR.
* One-run auditing (Steinke, Nasr & Jagielski 2023): canaries included with probability
  1/2; the auditor guesses "in" for the ``k`` best-scored and "out" for the ``k``
  worst-scored canaries; the number of correct guesses gives an ε lower bound at the
  chosen confidence: the largest ε for which (ε, δ)-DP makes that many correct guesses
  less likely than ``1 - confidence`` (their Theorem 3.1 with the δ term; for δ = 0
  this is the one-sided Clopper–Pearson bound on the guess accuracy, mapped through
  p = e^ε / (1 + e^ε)).
"""

from __future__ import annotations

import math

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -log_softmax(logits)[np.arange(len(labels)), labels]


def modified_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's Mentr: low for confidently correct predictions (members)."""
    log_p = log_softmax(logits)
    p = np.exp(log_p)
    rows = np.arange(len(labels))
    log_1mp = np.log(np.clip(1 - p, 1e-30, None))
    p_y, log_p_y, log_1mp_y = p[rows, labels], log_p[rows, labels], log_1mp[rows, labels]
    others = -(p * log_1mp).sum(axis=1) + p_y * log_1mp_y
    return -(1 - p_y) * log_p_y + others


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """AUC of "higher score = member" (Mann–Whitney U, ties count one half)."""
    scores = np.concatenate([member_scores, nonmember_scores])
    ranks = _average_ranks(scores)
    n1, n0 = len(member_scores), len(nonmember_scores)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """Largest TPR of a threshold whose FPR on the non-members is at most ``fpr``."""
    allowed = int(math.floor(fpr * len(nonmember_scores)))
    ordered = np.sort(nonmember_scores)[::-1]
    # Threshold strictly above the (allowed+1)-th highest non-member score.
    threshold = ordered[allowed] if allowed < len(ordered) else -np.inf
    return float((member_scores > threshold).mean())


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_vals = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_vals[end + 1] == sorted_vals[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def membership_inference(
    member_logits: np.ndarray, member_labels: np.ndarray,
    nonmember_logits: np.ndarray, nonmember_labels: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Both attacks' AUC and TPR at 0.1 %, 1 % and 10 % FPR."""
    attacks = {
        "loss_threshold": lambda lg, lb: -per_example_loss(lg, lb),
        "modified_entropy": lambda lg, lb: -modified_entropy(lg, lb),
    }
    report = {}
    for name, score in attacks.items():
        members = score(member_logits, member_labels)
        nonmembers = score(nonmember_logits, nonmember_labels)
        report[name] = {
            "auc": roc_auc(members, nonmembers),
            "tpr_at_fpr_0.001": tpr_at_fpr(members, nonmembers, 0.001),
            "tpr_at_fpr_0.01": tpr_at_fpr(members, nonmembers, 0.01),
            "tpr_at_fpr_0.1": tpr_at_fpr(members, nonmembers, 0.1),
            "members": len(members),
            "nonmembers": len(nonmembers),
        }
    return report


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[≥ v correct of r guesses] for an (ε, δ)-DP mechanism on m canaries.

    Steinke, Nasr & Jagielski (2023), Theorem 3.1: the binomial tail with success
    probability e^ε / (1 + e^ε), plus the δ term 2 m δ · max_i P[v-i ≤ Bin < v] / i.
    """
    from scipy import stats

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1 / (1 + math.exp(-eps))
    tail = stats.binom.sf(v - 1, r, q)
    alpha, window = 0.0, 0.0
    for i in range(1, v + 1):
        window += stats.binom.pmf(v - i, r, q)
        alpha = max(alpha, window / i)
    return float(min(1.0, tail + 2 * m * delta * alpha))


def one_run_epsilon_lower_bound(
    m: int, r: int, v: int, *, delta: float, confidence: float
) -> float:
    """Largest ε rejected at ``confidence`` by ``v`` correct of ``r`` guesses (0 if none)."""
    beta = 1 - confidence
    if r == 0 or one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while one_run_p_value(m, r, v, high, delta) < beta:
        low, high = high, high * 2
        if high > 1e3:
            return low
    for _ in range(50):
        mid = (low + high) / 2
        if one_run_p_value(m, r, v, mid, delta) < beta:
            low = mid
        else:
            high = mid
    return low


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a binomial proportion."""
    from scipy import stats

    if trials == 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    low = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes else 0.0
    high = (stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
            if successes < trials else 1.0)
    return float(low), float(high)


def exposure(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Canary exposure in bits: log2(#classes) - log2(rank of its label by loss).

    Carlini et al. (2019) exposure with the label as the secret: 0 when the canary's label
    is the least likely class, log2(C) when the model ranks it first.
    """
    loss = -log_softmax(logits)
    rank = 1 + (loss < loss[np.arange(len(labels)), labels][:, None]).sum(axis=1)
    return np.log2(logits.shape[1]) - np.log2(rank)


def canary_audit(
    logits: np.ndarray, labels: np.ndarray, included: np.ndarray, *, guesses: int,
    delta: float, confidence: float,
) -> dict[str, float]:
    """One-run audit from the final model's outputs on all canaries."""
    m = len(labels)
    k = guesses or max(m // 4, 1)
    scores = -per_example_loss(logits, labels)
    order = np.argsort(-scores, kind="mergesort")
    guessed_in, guessed_out = order[:k], order[m - k:]
    correct = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
    r = 2 * k
    low, high = clopper_pearson(correct, r, confidence)
    exp = exposure(logits, labels)
    return {
        "canaries": m, "included": int(included.sum()), "guesses": r, "correct": correct,
        "accuracy": correct / r, "accuracy_ci_low": low, "accuracy_ci_high": high,
        "epsilon_lower_bound": one_run_epsilon_lower_bound(
            m, r, correct, delta=delta, confidence=confidence),
        "confidence": confidence,
        "exposure_included_mean": float(exp[included].mean()) if included.any() else 0.0,
        "exposure_excluded_mean": float(exp[~included].mean()) if (~included).any() else 0.0,
        "auc_included_vs_excluded": (
            roc_auc(scores[included], scores[~included])
            if included.any() and (~included).any() else 0.5),
    }
