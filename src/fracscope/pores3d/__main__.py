"""CLI: ``python -m fracscope.pores3d input=STACK.tif output=DIR voxel_size_um=[z,y,x]``.

Any key of conf/pores3d.yaml can be overridden (``align.enabled=true``,
``pores.connectivity=26``, ``segment.method=local``). Errors in the input (a truncated
file, slices that differ, an unknown voxel size) or the settings end the run with a
one-line message and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> None:
    import hydra
    from omegaconf import DictConfig

    conf_dir = str(Path(__file__).resolve().parents[3] / "conf")

    @hydra.main(version_base="1.3", config_path=conf_dir, config_name="pores3d")
    def main(cfg: DictConfig) -> None:
        from fracscope.pores3d.run import SettingsError, run
        from fracscope.pores3d.stack import StackError

        try:
            result = run(cfg)
        except (StackError, SettingsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            # Hydra drops return values; SystemExit carries the status past it.
            raise SystemExit(2) from None
        s = result.summary
        print(
            f"{result.n_pores} pores >= {s['min_volume_um3']:g} µm³ ({s['n_noise_voids']} smaller voids dropped), "
            f"porosity {result.porosity_pct:.2f} %, particle {result.particle.eq_diameter_um:.2f} µm; "
            f"{result.wall_s:.1f} s -> {result.output_dir}"
        )

    main()


if __name__ == "__main__":
    _main()
