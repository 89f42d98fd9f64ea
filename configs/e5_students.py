"""The paper's ladder at the width of the multilingual-E5-small teacher (`e5_small.py`), so
that every student can start from the teacher's weights (`student.init=teacher_svd`: the
teacher's layers 3, 6, 9, 12, then truncated SVD to the ranks below).

Every student: 4 layers, hidden 384, 12 heads, FFN 1536 (the teacher's), BERT family, the
teacher's trimmed vocabulary (18,839 pieces; sizes scale with it). `e5_students.py:NAME`, NAME =
kd | lf_v1 | lf_v2 | lf_v3; MB = fp32, 10^6 bytes (`kdjax params --config ...`):

| NAME | ranks (word embedding / FFN / attention) | params | MB | paper's target |
| --- | --- | ---: | ---: | ---: |
| kd | 192 / - / - | 10.99M | 44.0 | <= 53 |
| lf_v1 | 192 / 160 / - | 8.73M | 34.9 | <= 35 |
| lf_v2 | 192 / 160 / 88 | 7.45M | 29.8 | <= 30 |
| lf_v3 | 32 / 160 / 88 | 4.37M | 17.5 | <= 18 |

Why these ranks: at this width the word embedding alone (18,839 x 384 = 7.2M params, 29 MB)
is over LF-V1's and LF-V2's whole budgets, so every student factorizes it, as the paper's KD
student does (ELECTRA-Small's 128-wide embedding + projection). One rank, 192 (78% of the
embedding's squared singular values), is shared by KD, LF-V1 and LF-V2, so each rung adds
exactly the paper's factorization: LF-V1 the FFN (rank 160: 75-86% of the energy of its
matrices), LF-V2 the attention projections (rank 88: 65-80%), LF-V3 the word embedding (rank
32). Four layers: a third of the teacher's depth and compute; the 2-core table's budget.
"""

import ml_collections

from kdjax.config_lib import model_config

VOCAB = 18839
SHAPE = dict(hidden_size=384, num_layers=4, num_heads=12, intermediate_size=1536,
             embedding_size=0, max_position_embeddings=512, family="bert", head="none",
             pad_token_id=1)
RANKS = {
    "kd": {"embedding_rank": 192},
    "lf_v1": {"embedding_rank": 192, "ffn_rank": 160},
    "lf_v2": {"embedding_rank": 192, "ffn_rank": 160, "attention_rank": 88},
    "lf_v3": {"embedding_rank": 32, "ffn_rank": 160, "attention_rank": 88},
}


def get_config(name: str = "lf_v3") -> ml_collections.ConfigDict:
    if name not in RANKS:
        from kdjax.errors import ConfigError

        raise ConfigError(f"e5_students.py:{name} is not one of {', '.join(RANKS)}")
    model = model_config(vocab_size=VOCAB, **SHAPE, **RANKS[name])
    return ml_collections.ConfigDict({"name": f"e5_{name}", "model": model})
