"""KR-ELECTRA-Small-LF-V3: LF-V2 plus a low-rank word embedding ([30000, r] @ [r, 128]).

Rank choice: the word embedding is the largest single tensor of the small model (3.84M of
7.3M params). r = 32 turns it into 0.96M + 4k params: 4.46M params = 17.9 MB fp32
(target 18 MB, -0.8%); r = 24 gives 15.9 MB (-12%, outside the tolerance).
"""

import ml_collections

from kdjax.config_lib import sibling


def get_config() -> ml_collections.ConfigDict:
    config = sibling(__file__, "lf_v2.py")
    config.name = "lf_v3"
    config.model.embedding_rank = 32
    return config
