"""CLI: ``fracscope-synth output=DIR kind=crops|electrode n=200 seed=0 preset=gp|p`` (or ``python -m fracscope.synth``).

Any key of conf/synth/config.yaml can be overridden (``imaging.noise_sd=0.05``); the
frozen held-out set is ``--config-name heldout``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fracscope.cli import run_hydra_app
from fracscope.synth.config import CONF_DIR
from fracscope.synth.generate import SYNTH_VERSION, generate_crops, generate_electrode
from fracscope.synth.preview import write_preview


def _items(cfg: DictConfig):
    if cfg.kind == "crops":
        return generate_crops(cfg, int(cfg.n), int(cfg.seed))
    if cfg.kind == "electrode":
        return generate_electrode(cfg, int(cfg.n), int(cfg.seed), workers=int(cfg.workers))
    raise ValueError(f"kind must be 'crops' or 'electrode', got {cfg.kind!r}")


def run(cfg: DictConfig) -> Path:
    """Generate the set described by `cfg` and write it (fracscope dataset format)."""
    from fracscope.data import write_dataset

    out = Path(str(cfg.output))
    out.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    meta = {"synth_version": SYNTH_VERSION, "preset": str(cfg.preset.name), "seed": int(cfg.seed), "kind": str(cfg.kind), "config": plain}
    first: list = []
    n_prev = int(cfg.get("preview", 8))

    def tap(items):
        for it in items:
            if len(first) < n_prev:
                first.append(it)
            yield it

    path = write_dataset(out, tap(_items(cfg)), meta)
    if first:
        write_preview(first, out / "preview.png")
    return path


def synth(cfg: DictConfig) -> None:
    print(f"wrote {run(cfg)}")


def main() -> None:
    run_hydra_app("fracscope-synth", synth, "config", CONF_DIR)


if __name__ == "__main__":
    main()
