"""Korean whole-word MLM augmentation (kdjax.data.augment): tiny generator, tiny tokenizer."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from kdjax.data.augment import load_mlm, mlm_augment, word_starts
from kdjax.data.tokenizer import train_sentencepiece, train_wordpiece
from kdjax.errors import ConfigError
from kdjax.modeldir import save_model_dir
from kdjax.models.config import EncoderConfig
from kdjax.models.model import abstract_params, init_params

SENTENCES = [
    "오늘 학교에서 친구들과 재미있는 영화를 봤다.",
    "이 영화는 정말 재미있었고 배우들의 연기도 훌륭했다.",
    "어제 먹은 음식은 너무 맛있어서 또 가고 싶다.",
    "배우들의 연기가 어색해서 영화가 지루했다.",
    "주말에는 가족들과 함께 공원에서 산책을 했다.",
    "학교 앞 식당에서 친구와 점심을 먹었다.",
    "그 영화는 지루했지만 음악은 정말 좋았다.",
    "날씨가 좋아서 공원에 사람들이 많았다.",
] * 4

MAX_LEN = 32


def _gen_config(**changes) -> EncoderConfig:
    base = dict(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2,
                intermediate_size=64, embedding_size=16, max_position_embeddings=64,
                head="generator")
    return EncoderConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "ko.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("wordpiece")
    return train_wordpiece([corpus], out, vocab_size=200, min_frequency=2, limit_alphabet=200,
                           show_progress=False)


@pytest.fixture(scope="module")
def generator():
    cfg = _gen_config()
    return cfg, init_params(cfg, 0)


@pytest.fixture(scope="module")
def arrays(tokenizer):
    texts = SENTENCES[:8]
    pairs = SENTENCES[8:16]
    enc = tokenizer(texts, pairs, truncation=True,
                    max_length=MAX_LEN, padding="max_length", return_tensors="np")
    # Some single-sentence rows too (more padding).
    single = tokenizer(texts[:4], truncation=True, max_length=MAX_LEN, padding="max_length",
                       return_tensors="np")
    out = {key: np.concatenate([enc[key], single[key]]).astype(np.int32)
           for key in ("input_ids", "attention_mask", "token_type_ids")}
    n = len(out["input_ids"])
    out["labels"] = (np.arange(n) % 2).astype(np.int32)
    out["hard_weight"] = np.ones(n, np.float32)
    return out


def _owners(starts: np.ndarray, in_word: np.ndarray) -> np.ndarray:
    pos = np.where(starts, np.arange(starts.shape[1])[None], -1)
    return np.where(in_word, np.maximum.accumulate(pos, axis=1), -1)


def test_word_starts_wordpiece(tokenizer, arrays):
    ids = arrays["input_ids"]
    starts = word_starts(ids, tokenizer)
    assert starts.shape == ids.shape and starts.dtype == bool
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    special = set(tokenizer.all_special_ids)
    for row, toks, st in zip(ids, tokens, starts):
        for i, (tid, tok) in enumerate(zip(row, toks)):
            if tid in special:
                assert not st[i], tok
            elif not tok.startswith("##"):
                assert st[i], tok
    # Korean words really are split into several sub-words in this vocabulary.
    assert any(t.startswith("##") for toks in tokens for t in toks)


def test_word_starts_sentencepiece(corpus, tmp_path):
    sp = train_sentencepiece([corpus], tmp_path / "sp", vocab_size=85, show_progress=False)
    enc = sp(SENTENCES[:3], padding="max_length", max_length=MAX_LEN, truncation=True,
             return_tensors="np")
    ids = enc["input_ids"]
    starts = word_starts(ids, sp)
    special = np.isin(ids, sp.all_special_ids)
    assert not (starts & special).any()
    for row, st in zip(ids, starts):
        toks = sp.convert_ids_to_tokens(row.tolist())
        for tok, s, tid in zip(toks, st, row):
            if tok.startswith("▁") and tid not in sp.all_special_ids:
                assert s, tok
    # One word start per eojeol (plus possibly none lost): about as many as spaces + 1.
    assert starts[0].sum() == len(SENTENCES[0].split())


def test_augment_shapes_labels_and_whole_words(tokenizer, generator, arrays):
    cfg, params = generator
    copies = 3
    out = mlm_augment(arrays, cfg, params, tokenizer, prob=0.3, copies=copies, top_k=5,
                      seed=0, batch_size=8)
    n = len(arrays["input_ids"])
    assert set(out) == set(arrays)
    for key, value in arrays.items():
        assert out[key].shape == (copies * n, *value.shape[1:]), key
        assert out[key].dtype == value.dtype, key
        if key != "input_ids":
            np.testing.assert_array_equal(out[key], np.concatenate([value] * copies))

    ids = arrays["input_ids"]
    special = np.isin(ids, tokenizer.all_special_ids)
    starts = word_starts(ids, tokenizer)
    real = arrays["attention_mask"].astype(bool)
    owners = _owners(starts, ~special & real)
    new_all = out["input_ids"].reshape(copies, n, -1)
    assert (new_all != ids[None]).any()
    for c in range(copies):
        new = new_all[c]
        changed = new != ids
        # Never special tokens or padding, and never a special token as a replacement.
        assert not (changed & special).any()
        assert not np.isin(new[changed], tokenizer.all_special_ids).any()
        # Every row has words, so every copy changes every row.
        assert changed.any(axis=1).all()
        # Changed positions are a union of whole words (all sub-words of a chosen word).
        for i in range(n):
            for w in np.unique(owners[i][changed[i]]):
                assert w >= 0
                np.testing.assert_array_equal(changed[i][owners[i] == w], True)
        # Word boundaries are kept: starts stay starts, continuations stay continuations.
        np.testing.assert_array_equal(word_starts(new, tokenizer), starts)
    # Copies of a row differ from each other.
    for i in range(n):
        rows = {tuple(new_all[c, i]) for c in range(copies)}
        assert len(rows) == copies


def test_augment_deterministic_per_seed(tokenizer, generator, arrays):
    cfg, params = generator
    kwargs = dict(prob=0.3, copies=2, top_k=5, batch_size=8)
    a = mlm_augment(arrays, cfg, params, tokenizer, seed=1, **kwargs)
    b = mlm_augment(arrays, cfg, params, tokenizer, seed=1, **kwargs)
    c = mlm_augment(arrays, cfg, params, tokenizer, seed=2, **kwargs)
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert (a["input_ids"] != c["input_ids"]).any()


def test_augment_prob_zero_and_no_copies(tokenizer, generator, arrays):
    cfg, params = generator
    out = mlm_augment(arrays, cfg, params, tokenizer, prob=0.0, copies=2)
    np.testing.assert_array_equal(out["input_ids"], np.concatenate([arrays["input_ids"]] * 2))
    empty = mlm_augment(arrays, cfg, params, tokenizer, copies=0)
    assert all(v.shape[0] == 0 for v in empty.values())


def test_augment_prob_one_replaces_every_word(tokenizer, generator, arrays):
    cfg, params = generator
    out = mlm_augment(arrays, cfg, params, tokenizer, prob=1.0, copies=1, top_k=5, seed=0,
                      batch_size=8, progress=True)
    ids = arrays["input_ids"]
    words = ~np.isin(ids, tokenizer.all_special_ids) & arrays["attention_mask"].astype(bool)
    np.testing.assert_array_equal(out["input_ids"] != ids, words)


@pytest.mark.parametrize("kind", ["token", "span"])
def test_augment_rejects_token_and_span_tasks(tokenizer, generator, arrays, kind):
    cfg, params = generator
    with pytest.raises(ConfigError, match=kind):
        mlm_augment(arrays, cfg, params, tokenizer, task_kind=kind)


def test_augment_regression_and_bad_args(tokenizer, generator, arrays):
    cfg, params = generator
    reg = {**arrays, "labels": np.linspace(0, 5, len(arrays["labels"])).astype(np.float32)}
    out = mlm_augment(reg, cfg, params, tokenizer, copies=1, top_k=5, batch_size=8,
                      task_kind="regression")
    np.testing.assert_array_equal(out["labels"], reg["labels"])
    with pytest.raises(ConfigError, match="augment.prob"):
        mlm_augment(arrays, cfg, params, tokenizer, prob=1.5)
    with pytest.raises(ConfigError, match="generator"):
        mlm_augment(arrays, cfg.replace(head="discriminator"), params, tokenizer)
    ner = {**arrays, "labels": np.zeros_like(arrays["input_ids"])}
    with pytest.raises(ConfigError, match="per-token"):
        mlm_augment(ner, cfg, params, tokenizer)


def test_load_mlm(tokenizer, generator, tmp_path):
    cfg, params = generator
    gen_dir = save_model_dir(tmp_path / "run" / "generator", cfg, params, tokenizer)
    loaded_cfg, loaded = load_mlm(gen_dir)
    assert loaded_cfg == cfg
    np.testing.assert_array_equal(
        loaded["embeddings"]["word_embeddings"]["embedding"],
        np.asarray(params["embeddings"]["word_embeddings"]["embedding"]),
    )
    disc_cfg = cfg.replace(head="discriminator")
    disc_params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_params(disc_cfg))
    disc_dir = save_model_dir(tmp_path / "run" / "model", disc_cfg, disc_params)
    # A pretrain workdir: its model/ is the discriminator, generator/ the MLM.
    assert load_mlm(tmp_path / "run")[0].head == "generator"
    with pytest.raises(ConfigError, match="point augment.mlm_model at the generator"):
        load_mlm(disc_dir)


@pytest.mark.parametrize("arch", ["ElectraForMaskedLM", "BertForMaskedLM"])
def test_load_mlm_hf(tmp_path, arch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    kind = "Electra" if arch.startswith("Electra") else "Bert"
    config = getattr(transformers, f"{kind}Config")(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )
    getattr(transformers, arch)(config).save_pretrained(tmp_path)
    cfg, params = load_mlm(tmp_path)
    assert cfg.head == "generator" and "generator_bias" in params
