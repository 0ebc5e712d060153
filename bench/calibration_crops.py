"""Int8 calibration crops for `python -m fracscope.export --int8 --calibration FILE`.

    python bench/calibration_crops.py calib.npy [--n 256] [--seed 0] [override ...]

Draws N crops (seeded, without augmentation) from the training split of the default
experiment's data (or of `data=...` overrides) and saves their model inputs, float32
(N, 2, S, S): the normalised image and the particle's own mask. This is how the shipped
int8 model was calibrated.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="train.yaml overrides (default: experiment=default)")
    args = ap.parse_args()

    from hydra.utils import instantiate

    from fracscope.cli import compose

    cfg = compose("train", "experiment=default", *args.overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    from fracscope.data.datamodule import ParticleDataset

    dataset = ParticleDataset(dm.arrays.subset(dm.train_idx))  # no augmenter: what inference sees
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(dataset), size=min(args.n, len(dataset)), replace=False)
    x = np.stack([dataset[int(i)]["x"].numpy() for i in np.sort(idx)])
    np.save(args.out, x)
    print(f"{args.out}: {x.shape} from {len(dataset)} training crops of {dm.synth_dir() if dm.path is None else dm.path}")


if __name__ == "__main__":
    main()
