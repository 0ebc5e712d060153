"""``fracscope-infer`` (also ``python infer.py``, ``python -m fracscope.infer``): bulk inference.

Composes conf/infer.yaml with the command line's overrides and calls `fracscope.pipeline.run`.
"""

from __future__ import annotations

import sys

from fracscope.cli import fail, run_hydra_app

PROG = "fracscope-infer"


def infer(cfg) -> None:
    """Run the pipeline on `cfg`, print a summary; failed files give exit status 1, all failed 2 (one line)."""
    from fracscope.pipeline import run

    outcome = run(cfg)
    if outcome.all_failed:  # nothing to report: one line, as for a usage mistake
        fail(
            PROG,
            f"all {len(outcome.failures)} input image(s) failed ({outcome.searched}); "
            f"the reasons are in {cfg.output}/errors.csv",
        )
    skipped = outcome.skipped_note()
    print(
        f"{outcome.n_particles} particles in {outcome.n_images} images, {outcome.wall_s:.1f} s "
        f"({outcome.n_particles / max(outcome.wall_s, 1e-9):.1f} particles/s) -> {cfg.output}"
        + (f"; {skipped}, see errors.csv" if skipped else "")
    )
    if outcome.failures:
        print(f"{len(outcome.failures)} file(s) failed:", file=sys.stderr)
        for source, page, error in outcome.failures:
            print(f"  {source} [page {page}]: {error}", file=sys.stderr)
        # Hydra drops return values; SystemExit carries the status past it.
        raise SystemExit(outcome.exit_code)


def _how_to_go_on(cfg) -> str:
    return f"the images done so far are kept in {cfg.output}; to go on, run the same command with resume=true"


def main() -> None:
    run_hydra_app(PROG, infer, "infer", on_interrupt=_how_to_go_on)


if __name__ == "__main__":
    main()
