"""TinyBERT general distillation, then prediction-layer distillation.

Stage 1 (intermediate, steps < `stage_boundary`): embedding MSE + hidden MSE (uniform map,
shared learned projection per term) + attention-score MSE (pre-softmax, equal head counts).
Stage 2: logit KD. The switch is a piecewise weight schedule; override the boundary with
--config.objective.terms.NAME.schedule.boundaries='(N,)' for every term, or use
`get_config(N)` via `objectives/tinybert.py:N`.
"""

import ml_collections


def get_config(stage_boundary: str | None = None) -> ml_collections.ConfigDict:
    b = int(stage_boundary or 10000)
    first = {"kind": "piecewise", "boundaries": (b,), "values": (1.0, 0.0)}
    second = {"kind": "piecewise", "boundaries": (b,), "values": (0.0, 1.0)}
    return ml_collections.ConfigDict({
        "temperature": 1.0,
        "terms": {
            "emb": {"loss": "hidden_mse", "feature": "embeddings", "projection": True,
                    "schedule": first},
            "hidden": {"loss": "hidden_mse", "feature": "hidden", "mapping": "uniform",
                       "projection": True, "schedule": first},
            "attn": {"loss": "attention_score_mse", "feature": "attention_scores",
                     "mapping": "uniform", "schedule": first},
            "pred": {"loss": "binary_kd_loss", "feature": "logits", "schedule": second},
        },
    })
