"""Regenerate the built-in sample data (run from the repository root): two groups of synthetic electrode fields."""
from pathlib import Path
import tifffile
from fracscope.synth import load_config, make_field

root = Path("data/sample")
for group, preset, damage, seed in (("GP-NCM_100cyc", "gp", "[0.4,0.45,0.15]", 11), ("P-NCM_100cyc", "p", "[0.1,0.6,0.3]", 12)):
    cfg = load_config(preset, overrides=[f"damage={damage}", "electrode.field_px=[1024,1280]"])
    (root / group).mkdir(parents=True, exist_ok=True)
    for i in range(3):
        item = make_field(cfg, seed, i)
        px = item.image.pixel_size_um
        tifffile.imwrite(root / group / f"field_{i:02d}.tif", item.image.pixels, resolution=(1 / px, 1 / px),
                         imagej=True, metadata={"unit": "um"}, compression="zlib")
        print(group, i, len(item.particles), px)
