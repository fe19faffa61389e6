"""Flower ClientApp and the per-framework trainers."""
