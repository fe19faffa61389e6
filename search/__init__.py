"""Federated architecture and hyperparameter search (Optuna, KerasTuner): not built yet."""
