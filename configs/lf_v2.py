"""KR-ELECTRA-Small-LF-V2: LF-V1 plus low-rank attention projections (Q, K, V and O).

Rank choice: each [256, 256] projection (65.5k params) becomes [256, r] @ [r, 256]
(512 r params). r = 64 (a quarter of the width, 4x fewer parameters per projection) gives
7.34M params = 29.4 MB fp32 (target 30 MB, -2.2%); r = 72 would give 30.1 MB but is not a
multiple of the 16/32-wide tiles accelerators prefer for small matmuls.
"""

import ml_collections

from kdjax.config_lib import sibling


def get_config() -> ml_collections.ConfigDict:
    config = sibling(__file__, "lf_v1.py")
    config.name = "lf_v2"
    config.model.attention_rank = 64
    return config
