"""The models of `bench/korean_table.py`: the paper's ladder scaled down to a 2-core CPU.

`korean_table.py:NAME` (NAME = teacher, generator, kd, lf_v1, lf_v2, lf_v3) is a size config:
`kdjax params --config configs/korean_table.py:kd`, or `--config.model=...` for a random init.

The paper: teacher 12 x 768 (E 768); KD student 12 x 256, 4 heads, E 128 + projection (8.1x
smaller); LF-V1 FFN rank 56, LF-V2 + attention rank 64, LF-V3 + word-embedding rank 32 (24x).
Here the teacher is 4 x 128 (E 128) - the widest teacher whose pre-training, distillation and
35 fine-tuning runs fit the study's 2-hour budget on 2 CPU cores - and the students 4 x 64 with
32-wide embeddings, ranks scaled with the width (FFN 14 = 256/18 as 56 = 1024/18, attention 16 =
64/4 as 64 = 256/4, embedding 8 = 32/4 as 32 = 128/4). The vocabulary (12,000 WordPiece
tokens, trained on the corpus) dominates the sizes at this width, as it does the paper's LF-V3.
"""

import ml_collections

from kdjax.config_lib import model_config

VOCAB = 12000
MAX_POSITIONS = 128
TEACHER = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
               embedding_size=128, head="discriminator")
# ELECTRA: a generator 1/4 - 1/2 the discriminator's width, sharing its embeddings.
GENERATOR = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256,
                 embedding_size=128, head="generator")
KD = dict(hidden_size=64, num_layers=4, num_heads=2, intermediate_size=256, embedding_size=32,
          head="discriminator")
RANKS = {
    "kd": {},
    "lf_v1": {"ffn_rank": 14},
    "lf_v2": {"ffn_rank": 14, "attention_rank": 16},
    "lf_v3": {"ffn_rank": 14, "attention_rank": 16, "embedding_rank": 8},
}
MODELS = {"teacher": TEACHER, "generator": GENERATOR,
          **{name: {**KD, **ranks} for name, ranks in RANKS.items()}}


def get_config(name: str = "teacher") -> ml_collections.ConfigDict:
    if name not in MODELS:
        from kdjax.errors import ConfigError

        raise ConfigError(f"korean_table.py:{name} is not one of {', '.join(MODELS)}")
    model = model_config(vocab_size=VOCAB, max_position_embeddings=MAX_POSITIONS,
                         **MODELS[name])
    return ml_collections.ConfigDict({"name": f"korean_table_{name}", "model": model})
