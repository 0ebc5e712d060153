"""CLI: ``fracscope-synth output=DIR kind=crops|electrode n=200 seed=0 preset=gp|p`` (or ``python -m fracscope.synth``).

Any key of conf/synth/config.yaml can be overridden (``imaging.noise_sd=0.05``); the
frozen held-out set is ``--config-name heldout``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fracscope.cli import run_hydra_app
from fracscope.settings import SettingsError
from fracscope.synth.config import CONF_DIR, SynthConfig
from fracscope.synth.generate import SYNTH_VERSION, generate_crops, generate_electrode
from fracscope.synth.preview import write_preview


def _items(cfg: SynthConfig):
    if cfg.kind == "crops":
        return generate_crops(cfg, cfg.n, cfg.seed)
    if cfg.kind == "electrode":
        return generate_electrode(cfg, cfg.n, cfg.seed, workers=cfg.workers)
    raise SettingsError(f"kind must be 'crops' or 'electrode', got {cfg.kind!r}")


def run(cfg: DictConfig | SynthConfig) -> Path:
    """Generate the set described by `cfg` (the composed config, read once) and write it (fracscope dataset format)."""
    from fracscope.data import write_dataset

    cfg = SynthConfig.from_config(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"synth_version": SYNTH_VERSION, "preset": cfg.preset.name, "seed": cfg.seed, "kind": cfg.kind,
            "config": cfg.to_dict()}
    first: list = []
    n_prev = cfg.preview

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
