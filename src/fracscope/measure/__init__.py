"""Pure numpy measurements shared by the generator, training and inference.

"Porosity" means one thing everywhere: Eq. 1 of Li et al. (2024), pore pixels over
particle-mask pixels × 100, where the particle mask is the filled section
(solid + pore + crack).
"""

from fracscope.measure.porosity import (
    PROFILE_FRACTIONS,
    RadialProfile,
    crack_pct,
    porosity_pct,
    radial_profile,
)
from fracscope.measure.particle import (
    area_um2,
    count_fragments,
    crack_length_um,
    eq_diameter_um,
    measure_particle,
)

__all__ = [
    "PROFILE_FRACTIONS",
    "RadialProfile",
    "area_um2",
    "count_fragments",
    "crack_length_um",
    "crack_pct",
    "eq_diameter_um",
    "measure_particle",
    "porosity_pct",
    "radial_profile",
]
