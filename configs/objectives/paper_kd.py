"""The paper's family: logit KD + hidden-state MSE + attention transfer.

- logits: KL on the ELECTRA discriminator's per-token sigmoid logits (binary_kd_loss).
- hidden: TinyBERT-style MSE between uniformly mapped layers through a learned projection
  (student width -> teacher width), embeddings included.
- attention: the attention transfer is done on the last layer's query and key self-relations
  (MiniLMv2 form, `qkv_relation_kl`), which needs neither equal head counts nor widths, so the
  same recipe works from a 12-head teacher to 4-head ELECTRA-Small students.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "temperature": 1.0,
        "terms": {
            "logits": {"loss": "binary_kd_loss", "feature": "logits", "weight": 1.0},
            "hidden": {"loss": "hidden_mse", "feature": "hidden", "weight": 1.0,
                       "mapping": "uniform", "include_embeddings": True, "projection": True},
            "attn_q": {"loss": "qkv_relation_kl", "feature": "q", "weight": 1.0,
                       "mapping": "last", "options": {"num_relation_heads": "auto"}},
            "attn_k": {"loss": "qkv_relation_kl", "feature": "k", "weight": 1.0,
                       "mapping": "last", "options": {"num_relation_heads": "auto"}},
        },
    })
