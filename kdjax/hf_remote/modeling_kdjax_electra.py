"""PyTorch ELECTRA with low-rank (factorized) layers, as exported by kdjax (format "factorized").

The modules are transformers' own ELECTRA modules (`transformers.models.electra`), with these
`nn.Linear` layers replaced by two factors when the config sets a rank (0 = dense):

  ffn_rank        layer.N.intermediate.dense, layer.N.output.dense
  attention_rank  layer.N.attention.self.{query,key,value}, layer.N.attention.output.dense

A factored layer computes `up(down(x))`: `down` [r, in] has no bias, `up` [out, r] carries the
bias, so its weights are `X.down.weight`, `X.up.weight` and `X.up.bias`. With `embedding_rank`
the word embedding is `embeddings.word_embeddings.weight` [vocab, r] followed by
`embeddings.word_embeddings_project.weight` [E, r] (no bias); the masked-LM head of such a model
scores `(h @ word_embeddings_project.weight) @ word_embeddings.weight.T + bias`, i.e. it stays
tied to the factored embedding. These names are the ones `kdjax.hf.key_table` lists, so kdjax
reads the checkpoint back with `kdjax.from_hf`.

Load with the Auto classes and `trust_remote_code=True`; needs torch and transformers >= 5.
This file is part of kdjax (kdjax/hf_remote/); it is copied verbatim into every factorized export.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.electra.modeling_electra import (
    ElectraEmbeddings,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ElectraModel,
)
from transformers.utils.generic import can_return_tuple

from .configuration_kdjax_electra import KdjaxElectraConfig


class LowRankLinear(nn.Module):
    """`up(down(x))`: a rank-`rank` stand-in for `nn.Linear(in_features, out_features)`."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _low_rank(linear: nn.Linear, rank: int) -> nn.Module:
    """`linear` itself when rank is 0, else a `LowRankLinear` of the same shape."""
    if not rank:
        return linear
    return LowRankLinear(linear.in_features, linear.out_features, rank)


def factorize_encoder_(encoder: nn.Module, config: KdjaxElectraConfig) -> None:
    """Swap the ranked `nn.Linear`s of every layer of an `ElectraEncoder` for factored ones."""
    attn_rank, ffn_rank = config.attention_rank, config.ffn_rank
    for layer in encoder.layer:
        attention = layer.attention.self
        for name in ("query", "key", "value"):
            setattr(attention, name, _low_rank(getattr(attention, name), attn_rank))
        layer.attention.output.dense = _low_rank(layer.attention.output.dense, attn_rank)
        layer.intermediate.dense = _low_rank(layer.intermediate.dense, ffn_rank)
        layer.output.dense = _low_rank(layer.output.dense, ffn_rank)


class KdjaxElectraEmbeddings(ElectraEmbeddings):
    """ELECTRA embeddings whose word embedding may be low-rank: [vocab, r] then r -> E."""

    def __init__(self, config: KdjaxElectraConfig) -> None:
        super().__init__(config)
        rank = config.embedding_rank
        if rank:
            self.word_embeddings = nn.Embedding(config.vocab_size, rank,
                                                padding_idx=config.pad_token_id)
            self.word_embeddings_project = nn.Linear(rank, config.embedding_size, bias=False)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                **kwargs):
        # `inputs_embeds`, when given, are E-wide (after the projection), as for ELECTRA.
        if inputs_embeds is None and hasattr(self, "word_embeddings_project"):
            inputs_embeds = self.word_embeddings_project(self.word_embeddings(input_ids))
        return super().forward(input_ids=input_ids, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)


def _check_config(config: KdjaxElectraConfig) -> None:
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValueError("kdjax's low-rank ELECTRA is an encoder only (is_decoder and "
                         "add_cross_attention must be False)")


class KdjaxElectraModel(ElectraModel):
    """`ElectraModel` with low-rank layers per the config's ranks (returns hidden states)."""

    config_class = KdjaxElectraConfig

    def __init__(self, config: KdjaxElectraConfig) -> None:
        _check_config(config)
        super().__init__(config)
        self.embeddings = KdjaxElectraEmbeddings(config)
        factorize_encoder_(self.encoder, config)
        self.post_init()  # again: initialise the swapped-in modules, register their weights


def _use_kdjax_base(model: nn.Module, config: KdjaxElectraConfig) -> None:
    model.electra = KdjaxElectraModel(config)


class KdjaxElectraForPreTraining(ElectraForPreTraining):
    """Replaced-token-detection discriminator (logits [batch, length])."""

    config_class = KdjaxElectraConfig

    def __init__(self, config: KdjaxElectraConfig) -> None:
        super().__init__(config)
        _use_kdjax_base(self, config)
        self.post_init()


class KdjaxElectraForSequenceClassification(ElectraForSequenceClassification):
    """Sequence classification / regression head on [CLS] (dense, GELU, out_proj)."""

    config_class = KdjaxElectraConfig

    def __init__(self, config: KdjaxElectraConfig) -> None:
        super().__init__(config)
        _use_kdjax_base(self, config)
        self.post_init()


class KdjaxElectraForTokenClassification(ElectraForTokenClassification):
    """Per-token classification head (NER)."""

    config_class = KdjaxElectraConfig

    def __init__(self, config: KdjaxElectraConfig) -> None:
        super().__init__(config)
        _use_kdjax_base(self, config)
        self.post_init()


class KdjaxElectraForQuestionAnswering(ElectraForQuestionAnswering):
    """Span-extraction head (start and end logits)."""

    config_class = KdjaxElectraConfig

    def __init__(self, config: KdjaxElectraConfig) -> None:
        super().__init__(config)
        _use_kdjax_base(self, config)
        self.post_init()


class KdjaxElectraForMaskedLM(ElectraForMaskedLM):
    """ELECTRA generator: MLM head tied to the (possibly low-rank) word embedding.

    With `embedding_rank` r, `generator_lm_head` is an r -> vocab `nn.Linear` whose weight is
    tied to `electra.embeddings.word_embeddings.weight` [vocab, r]; the E-wide output of
    `generator_predictions` first goes through the transposed embedding projection.
    """

    config_class = KdjaxElectraConfig
    _tied_weights_keys = {"generator_lm_head.weight": "electra.embeddings.word_embeddings.weight"}

    def __init__(self, config: KdjaxElectraConfig) -> None:
        super().__init__(config)
        _use_kdjax_base(self, config)
        if config.embedding_rank:
            self.generator_lm_head = nn.Linear(config.embedding_rank, config.vocab_size)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor] | MaskedLMOutput:
        outputs = self.electra(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden = self.generator_predictions(outputs[0])
        embeddings = self.electra.embeddings
        if hasattr(embeddings, "word_embeddings_project"):
            # [.., E] @ [E, r]: the transpose of the r -> E embedding projection.
            hidden = torch.matmul(hidden, embeddings.word_embeddings_project.weight)
        logits = self.generator_lm_head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config.vocab_size),
                                               labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)


__all__ = [
    "KdjaxElectraForMaskedLM",
    "KdjaxElectraForPreTraining",
    "KdjaxElectraForQuestionAnswering",
    "KdjaxElectraForSequenceClassification",
    "KdjaxElectraForTokenClassification",
    "KdjaxElectraModel",
    "LowRankLinear",
]
