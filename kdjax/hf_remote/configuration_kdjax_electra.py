"""Configuration of kdjax's low-rank ELECTRA (shipped with factorized kdjax exports).

An `ElectraConfig` plus three ranks (0 = dense, as in kdjax's `EncoderConfig`):
  ffn_rank        the FFN matrices W1 [H, F] and W2 [F, H] as two factors each (LF-V1),
  attention_rank  the attention projections Q, K, V and O as two factors each (LF-V2),
  embedding_rank  the word embedding as [vocab, r] times [r, E] (LF-V3).
`kdjax` holds what kdjax wrote (format, family, head, the same ranks) so that
`kdjax.from_hf(directory)` reads the model back.

Needs transformers >= 5 (dataclass configs). This file is part of kdjax (kdjax/hf_remote/).
"""

from __future__ import annotations

from transformers import ElectraConfig


class KdjaxElectraConfig(ElectraConfig):
    """`ElectraConfig` with low-rank factorization ranks (0 = dense)."""

    model_type = "kdjax_electra"

    embedding_rank: int = 0
    attention_rank: int = 0
    ffn_rank: int = 0
    kdjax: dict | None = None


__all__ = ["KdjaxElectraConfig"]
