"""Train the fracscope particle model: ``python train.py [overrides]`` (see README.md, ``--help``).

A thin wrapper of `fracscope.train.main` (installed as ``fracscope-train``), which composes
conf/train.yaml and calls `fracscope.models.train.run`.
"""

from fracscope.train import main

if __name__ == "__main__":
    main()
