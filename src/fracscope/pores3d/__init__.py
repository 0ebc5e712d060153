"""3-D pore analysis of FIB-SEM tomography stacks (the seed paper's Fig. 3).

The data flow, one module per stage::

    stack.open_stack ──▶ align.AlignedStack ──▶ segment.SliceSegmenter ──▶ label.ChunkedLabeler
        ──▶ measure (pores, particle, radial shells) ──▶ report (pores.csv/parquet, summary.json, plots/)

`run.analyse_stack` strings them together for an open stack, `run.run(cfg)` for the Hydra
config (``python -m fracscope.pores3d input=STACK.tif output=DIR voxel_size_um=[z,y,x]``).
`synth` generates test particles with pores of known voxels.
"""

from fracscope.pores3d.label import ChunkedLabeler, LabelMerge, label_chunked, structure
from fracscope.pores3d.run import Pores3DResult, Settings, SettingsError, analyse_stack, run
from fracscope.pores3d.stack import ArrayStack, Stack, StackError, VoxelSize, open_stack

__all__ = [
    "ArrayStack",
    "ChunkedLabeler",
    "LabelMerge",
    "Pores3DResult",
    "Settings",
    "SettingsError",
    "Stack",
    "StackError",
    "VoxelSize",
    "analyse_stack",
    "label_chunked",
    "open_stack",
    "run",
    "structure",
]
