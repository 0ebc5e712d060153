"""Pure numpy measurements shared by the generator, training and inference.

"Porosity" means one thing everywhere: Eq. 1 of Li et al. (2024), pore pixels over
particle-mask pixels × 100, where the particle mask is the filled section
(solid + pore + crack).
"""

from fracscope.measure.cracks import (
    MIN_FRAGMENT_FRACTION,
    count_fragments,
    crack_length_um,
    crack_measurements,
    crack_reach_frac,
    crack_reaches_surface,
    crack_skeleton_lengths_px,
    depth_px,
)
from fracscope.measure.porosity import (
    PROFILE_FRACTIONS,
    RadialProfile,
    crack_pct,
    porosity_pct,
    radial_profile,
)
from fracscope.measure.particle import (
    area_um2,
    eq_diameter_um,
    measure_particle,
)

__all__ = [
    "MIN_FRAGMENT_FRACTION",
    "PROFILE_FRACTIONS",
    "RadialProfile",
    "area_um2",
    "count_fragments",
    "crack_length_um",
    "crack_measurements",
    "crack_pct",
    "crack_reach_frac",
    "crack_reaches_surface",
    "crack_skeleton_lengths_px",
    "depth_px",
    "eq_diameter_um",
    "measure_particle",
    "porosity_pct",
    "radial_profile",
]
