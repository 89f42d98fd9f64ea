"""MiniLMv2 (Wang et al. 2021): multi-head self-attention relations Q-Q, K-K, V-V on the last
layer, re-split into relation heads (auto: the largest count dividing both widths), so
teacher and student head counts and widths may differ."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    rel = {"num_relation_heads": "auto"}
    return ml_collections.ConfigDict({
        "temperature": 1.0,
        "terms": {
            "qq": {"loss": "qkv_relation_kl", "feature": "q", "mapping": "last", "options": rel},
            "kk": {"loss": "qkv_relation_kl", "feature": "k", "mapping": "last", "options": rel},
            "vv": {"loss": "qkv_relation_kl", "feature": "v", "mapping": "last", "options": rel},
        },
    })
