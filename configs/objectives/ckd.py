"""CKD (Park et al. 2021, contextual knowledge distillation): logit KD plus word-relation (WR)
and layer-transforming-relation (LTR) terms, each distance- and angle-wise. Width-free: no
projection and no head-count constraint. WR angle uses a local window (O(L w^2) memory)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "temperature": 1.0,
        "terms": {
            "logits": {"loss": "binary_kd_loss", "feature": "logits"},
            "wr_dist": {"loss": "wr_distance", "feature": "hidden", "mapping": "last"},
            "wr_angle": {"loss": "wr_angle", "feature": "hidden", "mapping": "last",
                         "options": {"window": 8}},
            "ltr_dist": {"loss": "ltr_distance", "feature": "hidden", "mapping": "emb_skip"},
            "ltr_angle": {"loss": "ltr_angle", "feature": "hidden", "mapping": "emb_skip"},
        },
    })
