"""KR-ELECTRA-Small-LF-V1: kd_small with a low-rank FFN (W1 and W2 each as two factors).

Rank choice: the paper publishes sizes, not ranks. Each FFN matrix [256, 1024] (262k params)
becomes [256, r] @ [r, 1024] (1,280 r params). r = 56 gives 8.91M params = 35.6 MB fp32
(target 35 MB, +1.8%); r = 48 gives 34.7 MB (-1.0%) but 56 keeps more FFN capacity at the
same tolerance, and multiples of 8 tile well on TPU/GPU matmul units.
"""

import ml_collections

from kdjax.config_lib import sibling


def get_config() -> ml_collections.ConfigDict:
    config = sibling(__file__, "kd_small.py")
    config.name = "lf_v1"
    config.model.ffn_rank = 56
    return config
