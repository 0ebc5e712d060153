"""``fracscope-train`` (also ``python train.py``, ``python -m fracscope.train``): train the particle model.

Composes conf/train.yaml with the command line's overrides and calls `fracscope.models.train.run`.
"""

from __future__ import annotations

from fracscope.cli import run_hydra_app

PROG = "fracscope-train"


def train(cfg) -> float | None:
    """Train one model; returns the best validation macro-F1 for sweepers that optimise a value (Optuna)."""
    from fracscope.models.train import run

    return run(cfg).best_metrics.get("val/macro_f1")


def main() -> None:
    run_hydra_app(PROG, train, "train")


if __name__ == "__main__":
    main()
