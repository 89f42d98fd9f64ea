"""DistilBERT: soft cross-entropy on the MLM distribution (T = 2, alpha_ce 5), the student's
own MLM loss (alpha_mlm 2) and the cosine between last hidden states (alpha_cos 1).

Needs MLM heads on both models (model.head='generator': a BERT MLM teacher or an ELECTRA
generator) with one vocabulary. The vocab logits are computed at the masked positions only.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "temperature": 2.0,
        "terms": {
            "soft_ce": {"loss": "kd_loss", "feature": "mlm_logits", "weight": 5.0},
            "mlm": {"loss": "hard_label_loss", "feature": "labels", "weight": 2.0},
            "cos": {"loss": "cosine_loss", "feature": "hidden", "mapping": "last",
                    "projection": True, "weight": 1.0},
        },
    })
