"""Train the fracscope particle model: ``python train.py [overrides]`` (see README.md).

A thin Hydra wrapper: composes ``conf/train.yaml`` and calls `fracscope.models.train.run`.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

# Absolute, so the script also works when imported (tests) or run from another folder.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from fracscope.models.train import run

    result = run(cfg)
    # Returned for sweepers that optimise a value (e.g. Optuna).
    return result.best_metrics.get("val/macro_f1")


if __name__ == "__main__":
    main()
