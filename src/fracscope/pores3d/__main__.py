"""CLI: ``fracscope-pores3d input=STACK.tif output=DIR voxel_size_um=[z,y,x]`` (or ``python -m fracscope.pores3d``).

Any key of conf/pores3d.yaml can be overridden (``align.enabled=true``,
``pores.connectivity=26``, ``segment.method=local``). Errors in the input (a truncated
file, slices that differ, an unknown voxel size) or the settings end the run with a
one-line message and exit status 2 (`fracscope.cli`).
"""

from __future__ import annotations

from fracscope.cli import run_hydra_app


def pores3d(cfg) -> None:
    """Measure the 3-D pores of the stack of `cfg` and print a summary."""
    from fracscope.pores3d.run import run

    result = run(cfg)
    s = result.summary
    print(
        f"{result.n_pores} pores >= {s['min_volume_um3']:g} µm³ ({s['n_noise_voids']} smaller voids dropped), "
        f"porosity {result.porosity_pct:.2f} %, particle {result.particle.eq_diameter_um:.2f} µm; "
        f"{result.wall_s:.1f} s -> {result.output_dir}"
    )


def main() -> None:
    run_hydra_app("fracscope-pores3d", pores3d, "pores3d")


if __name__ == "__main__":
    main()
