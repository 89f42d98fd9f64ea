"""KoMiniLM: MiniLM's attention distribution (AT) and value relation (VR) transferred from
every student layer to its proportional teacher layer (mapping `every`; 6 <- 12 uses teacher
layers 2, 4, ..., 12). Needs equal head counts (KoMiniLM-23M has 12, like the teacher)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "temperature": 1.0,
        "terms": {
            "at": {"loss": "attention_kl", "feature": "attention", "mapping": "every"},
            "vr": {"loss": "value_relation_kl", "feature": "v", "mapping": "every"},
        },
    })
