"""Empty-round audit: can the released model sequence tell rounds nobody took part in?

Client-level DP (:class:`strategies.client_dp.ClientLevelDP`, DP-FedAvg of McMahan et al.
2018 with fixed clipping) releases ``current + (Σ clip(Δ_i) + noise) / (qN)`` in every
round, also when Poisson sampling chose nobody. Whatever the inner strategy does after
that (FedAvgM's momentum, FedAdam's step) must be a function of the release alone; if it
behaves differently in empty rounds, an adversary who sees the models learns who took
part, beyond what the accountant's ε allows.

This script drives the wrapper directly with synthetic client updates (no training):
z = 1, q = 0.1, C = 1, 100 rounds, repeated runs, N ∈ {2, 3, 10, 100}, inner FedAvgM and
FedAdam. Every sampled client sends the same update of norm 2C (clipped to C) along one
fixed direction, the strongest signal a client can send. The adversary looks at each
round's step (its L2 norm, and its cosine with the previous step) and flags a round as
empty when a feature is above or below a threshold; feature, side and threshold are
chosen on the even-numbered runs, the test is evaluated on the odd ones. With
Clopper-Pearson 95 % bounds on its rates (Jagielski et al. 2020, "Auditing Differentially
Private Machine Learning: How Private is Private SGD?", NeurIPS)

    ε_lb = max(log((TPR_lo − δ) / FPR_hi), log((TNR_lo − δ) / FNR_hi)),  δ = 1e-5,

compared with the ledger's ε for the run (Poisson-subsampled Gaussian, RDP). A perfect
separation gives an ε_lb limited only by the number of test rounds.

    python benchmarks/empty_round_audit.py              # this checkout
    python benchmarks/empty_round_audit.py --reps 200   # tighter bounds, slower

To audit another version, copy this file into a checkout of it (``git worktree add``) and
run it there: it imports the strategies of the checkout it lives in.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.core import wire  # noqa: E402
from sandbox.core.privacy import epsilon  # noqa: E402
from sandbox.core.privacy.audit import clopper_pearson  # noqa: E402

ROUNDS, RATE, Z, CLIP, DELTA = 100, 0.1, 1.0, 1.0, 1e-5
SIZE = 256  # parameters of the synthetic model
CLIENTS = (2, 3, 10, 100)
STRATEGIES = ("fedavgm", "fedadam")


def audit_config(strategy: str, num_clients: int, *, rounds: int = ROUNDS, rate: float = RATE,
                 noise_multiplier: float = Z, clipping_norm: float = CLIP):
    """A validated config with server-side fixed-clipping client-level DP."""
    from sandbox import load_config

    return load_config(ROOT / "configs" / "quickstart.toml", {
        "rounds": rounds, "data.num_clients": num_clients, "federation.strategy": strategy,
        "federation.fraction_train": rate, "federation.fraction_evaluate": 0.0,
        "privacy.client.mode": "server_fixed", "privacy.noise": "seeded",
        "privacy.client.noise_multiplier": noise_multiplier,
        "privacy.client.clipping_norm": clipping_norm, "output.progress": False})


class ClientDPDriver:
    """``cfg``'s client-level DP strategy driven round by round without a runtime.

    The wrapper sees an in-process grid restricted to the round's clients; replies are
    built from the training messages it configures (``Message(..., reply_to=...)``), as
    a ClientApp would, carrying ``received + update`` or an error.
    """

    def __init__(self, cfg, *, seed: int, start: np.ndarray) -> None:
        from flwr.app import Array, ArrayRecord
        from flwr.clientapp import ClientApp
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        import strategies
        from sandbox.core.privacy.plan import client_dp_plan
        from sandbox.engine.runtime.inline import InlineGrid
        from strategies.client_dp import ClientLevelDP

        # Message() reads the sender's identity from the process-wide task identity, which
        # Flower's runtimes (and ours, sandbox.engine.runtime.inline) set for a ServerApp.
        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        inner = strategies.build_strategy(cfg.federation, cfg.data.num_clients,
                                          weighted_by_key=wire.UNIT_WEIGHT)
        self.strategy = ClientLevelDP(inner, client_dp_plan(cfg), seed=seed)
        self.grid = InlineGrid(ClientApp(), cfg.data.num_clients, run_id=1)
        self.nodes = sorted(self.grid.get_node_ids())
        self.arrays = ArrayRecord({wire.FLAT_KEY: Array(np.asarray(start, np.float32))})

    def round(self, server_round: int, updates: list[np.ndarray], failed: int = 0
              ) -> np.ndarray:
        """A round where ``len(updates)`` clients reply and ``failed`` more fail; the new model."""
        from flwr.app import ConfigRecord

        from strategies.sampling import SampledGrid

        taking_part = self.nodes[:len(updates) + failed]
        messages = self.strategy.configure_train(server_round, self.arrays, ConfigRecord(),
                                                 SampledGrid(self.grid, taking_part))
        by_node = dict(zip(taking_part, [*updates, *[None] * failed], strict=True))
        replies = [_reply(msg, by_node[msg.metadata.dst_node_id]) for msg in messages]
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        self.arrays = arrays
        return arrays[wire.FLAT_KEY].numpy()


def _reply(msg, update: np.ndarray | None):
    """A client's reply to ``msg``: ``received + update``, or an error for None."""
    from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

    if update is None:
        return Message(Error(code=0, reason="RuntimeError: injected failure"), reply_to=msg)
    received = msg.content[wire.ARRAYS][wire.FLAT_KEY].numpy()
    metrics = MetricRecord({wire.NUM_EXAMPLES: 10, wire.UNIT_WEIGHT: 1.0,
                            wire.TRAIN_LOSS: 0.0})
    arrays = ArrayRecord({wire.FLAT_KEY: Array(received + update.astype(received.dtype))})
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=msg)


def run_models(cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One run: the models w_0..w_T (float64 rows) and each round's client count."""
    rng = np.random.default_rng([seed, 0xE4])  # the sample; the noise has its own seeds
    start = rng.normal(0, 0.1, SIZE)
    update = np.zeros(SIZE)
    update[0] = 2 * cfg.privacy.client.clipping_norm  # clipped to C: the largest signal
    driver = ClientDPDriver(cfg, seed=seed, start=start)
    models, counts = [np.asarray(driver.arrays[wire.FLAT_KEY].numpy(), np.float64)], []
    for server_round in range(1, cfg.rounds + 1):
        count = int(rng.binomial(cfg.data.num_clients, cfg.federation.fraction_train))
        models.append(np.asarray(driver.round(server_round, [update] * count), np.float64))
        counts.append(count)
    return np.array(models), np.array(counts)


def step_features(models: np.ndarray) -> dict[str, np.ndarray]:
    """Per round t ≥ 2: ‖w_t − w_{t−1}‖ and the cosine of consecutive steps."""
    steps = np.diff(models, axis=0)
    norms = np.linalg.norm(steps, axis=1)
    cosine = np.sum(steps[1:] * steps[:-1], axis=1) / np.maximum(norms[1:] * norms[:-1],
                                                                 1e-300)
    return {"step norm": norms[1:], "step cosine": cosine}


def epsilon_lower_bound(flagged: np.ndarray, empty: np.ndarray, delta: float = DELTA
                        ) -> float:
    """ε_lb of the test "flagged ⇒ empty" from Clopper-Pearson 95 % bounds (0: none)."""
    positives, negatives = int(empty.sum()), int((~empty).sum())
    true_pos, false_pos = int((flagged & empty).sum()), int((flagged & ~empty).sum())
    tpr_lo, _ = clopper_pearson(true_pos, positives, 0.95)
    _, fpr_hi = clopper_pearson(false_pos, negatives, 0.95)
    tnr_lo, _ = clopper_pearson(negatives - false_pos, negatives, 0.95)
    _, fnr_hi = clopper_pearson(positives - true_pos, positives, 0.95)
    bounds = [math.log((hit - delta) / miss) for hit, miss in ((tpr_lo, fpr_hi),
                                                               (tnr_lo, fnr_hi))
              if hit > delta and miss > 0]
    return max([0.0, *bounds])


def best_test(features: dict[str, np.ndarray], empty: np.ndarray
              ) -> tuple[str, str, float]:
    """Feature, side and threshold with the largest ε_lb on these (training) rounds.

    Ties (several tests at the bound the sample size allows) go to the larger balanced
    accuracy, the test most likely to stay perfect on other rounds.
    """
    best, best_score = ("step norm", ">=", math.inf), (-1.0, 0.0)
    if not empty.any() or empty.all():
        return best
    for name, values in features.items():
        for threshold in np.unique(np.quantile(values, np.linspace(0, 1, 201))):
            for side in (">=", "<="):
                flagged = values >= threshold if side == ">=" else values <= threshold
                accuracy = (flagged[empty].mean() + (~flagged[~empty]).mean()) / 2
                score = (epsilon_lower_bound(flagged, empty), float(accuracy))
                if score > best_score:
                    best, best_score = (name, side, float(threshold)), score
    return best


def audit(strategy: str, num_clients: int, reps: int) -> dict:
    """Train the adversary on even runs, test it on odd runs; ε_lb vs the ledger's ε."""
    cfg = audit_config(strategy, num_clients)
    halves: list[list] = [[], []]
    for rep in range(reps):
        models, counts = run_models(cfg, seed=rep)
        halves[rep % 2].append((step_features(models), counts[1:] == 0))
    joined = [({name: np.concatenate([f[name] for f, _ in half]) for name in half[0][0]},
               np.concatenate([e for _, e in half])) for half in halves]
    (train_features, train_empty), (test_features, test_empty) = joined
    name, side, threshold = best_test(train_features, train_empty)
    values = test_features[name]
    flagged = values >= threshold if side == ">=" else values <= threshold
    return {"empty": int(test_empty.sum()), "rounds": len(test_empty),
            "test": f"{name} {side} {threshold:.4g}",
            "tpr": float((flagged & test_empty).sum() / max(test_empty.sum(), 1)),
            "fpr": float((flagged & ~test_empty).sum() / max((~test_empty).sum(), 1)),
            "epsilon_lb": epsilon_lower_bound(flagged, test_empty),
            "ledger_epsilon": epsilon([(cfg.privacy.client.noise_multiplier, RATE,
                                        cfg.rounds)], DELTA)}


def code_version() -> str:
    """Which strategies this run audits: the imported module, its checkout's commit."""
    import strategies.client_dp

    source = Path(strategies.client_dp.__file__)
    commit = subprocess.run(["git", "-C", str(source.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    changed = subprocess.run(["git", "-C", str(source.parent), "status", "--porcelain", "--",
                              "."], capture_output=True, text=True, check=False).stdout
    return f"{source} @ {commit or 'unknown'}{' + local changes' if changed else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=60, help="runs per cell (half train, "
                        "half test; default 60)")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    args = parser.parse_args(argv)
    import logging

    import flwr.serverapp  # noqa: F401  (configures Flower's logger, which we then quiet)

    logging.getLogger("flwr").setLevel(logging.ERROR)
    print(f"code: {code_version()}")
    print(f"z={Z}, q={RATE}, C={CLIP}, {ROUNDS} rounds, delta={DELTA}, {args.reps} runs "
          f"per cell, {SIZE} parameters")
    print(f"{'N':>4} {'strategy':<9} {'empty/test rounds':>18} {'adversary (train half)':<30}"
          f" {'TPR':>6} {'FPR':>7} {'eps_lb':>7} {'ledger eps':>10}")
    worst = 0.0
    for num_clients in args.clients:
        for strategy in args.strategies:
            began = time.perf_counter()
            row = audit(strategy, num_clients, args.reps)
            worst = max(worst, row["epsilon_lb"] - row["ledger_epsilon"])
            print(f"{num_clients:>4} {strategy:<9} {row['empty']:>8}/{row['rounds']:<9} "
                  f"{row['test']:<30} {row['tpr']:>6.3f} {row['fpr']:>7.4f} "
                  f"{row['epsilon_lb']:>7.2f} {row['ledger_epsilon']:>10.2f}"
                  f"   ({time.perf_counter() - began:.0f} s)", flush=True)
    verdict = "exceeds" if worst > 0 else "stays within"
    print(f"largest eps_lb - ledger eps: {worst:+.2f} (the lower bound {verdict} the ledger)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
