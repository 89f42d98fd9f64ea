"""MiniLM (Wang et al. 2020): last-layer self-attention distribution (AT) + value relation (VR).

Needs equal head counts (student and teacher); widths may differ. For different head counts
use `minilmv2`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "temperature": 1.0,
        "terms": {
            "at": {"loss": "attention_kl", "feature": "attention", "mapping": "last"},
            "vr": {"loss": "value_relation_kl", "feature": "v", "mapping": "last"},
        },
    })
