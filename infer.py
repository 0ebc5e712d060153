"""Bulk inference: python infer.py input=DIR_OR_GLOB output=DIR model_path=... device=cpu|cuda

With no arguments it runs the shipped model on the built-in sample data.
"""

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    from fracscope.pipeline import run

    outcome = run(cfg)
    print(
        f"{outcome.n_particles} particles in {outcome.n_images} images, {outcome.wall_s:.1f} s "
        f"({outcome.n_particles / max(outcome.wall_s, 1e-9):.1f} particles/s) -> {cfg.output}"
    )
    if outcome.failures:
        print(f"{len(outcome.failures)} file(s) failed:", file=sys.stderr)
        for source, page, error in outcome.failures:
            print(f"  {source} [page {page}]: {error}", file=sys.stderr)
        # Hydra drops return values; SystemExit carries the status past it.
        raise SystemExit(outcome.exit_code)


if __name__ == "__main__":
    main()
