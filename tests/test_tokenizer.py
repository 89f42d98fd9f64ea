"""Tests for kdjax.data.tokenizer: training, loading, Korean handling and the CLI.

Corpora are tiny hand-written Korean fixtures (NSMC / news-comment style, with some English and
numbers) written into temporary directories; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import pytest

from kdjax.data import tokenizer as tk
from kdjax.errors import ConfigError, DataError

SENTS = [
    "이 영화 정말 재미있어요! 배우들의 연기가 최고였습니다.",
    "스토리가 너무 지루해서 중간에 잠들었어요...",
    "학교에서 친구들과 함께 봤는데 다들 좋아했어요.",
    "안녕하세요 여러분, 오늘 날씨가 참 좋네요.",
    "감독의 연출은 훌륭했지만 결말은 아쉬웠다.",
    "10점 만점에 8점 주고 싶네요. 강추합니다",
    "OST가 너무 좋아서 계속 듣고 있어요 ㅎㅎ",
    "시간 낭비였다. 돈이 아깝다 ㅠㅠ",
    "한국 영화의 새로운 가능성을 보여준 작품이다.",
    "주인공은 학생이고 선생님은 그의 아버지였다.",
    "정부는 내년 예산을 5% 늘리기로 결정했다.",
    "서울시는 대중교통 요금을 인상한다고 밝혔다.",
    "삼성전자의 3분기 영업이익은 10조원을 넘었다.",
    "이번 선거에서 투표율은 역대 최고를 기록했다.",
    "기자는 현장에서 사람들을 만나 이야기를 들었다.",
    "우리는 도서관에서 책을 읽고 공부를 했다.",
    "어머니께서 맛있는 김치찌개를 만들어 주셨다.",
    "그 가수는 새 앨범을 발표하고 콘서트를 열었다.",
    "Netflix에서 공개된 드라마가 전 세계 1위를 차지했다.",
    "BTS의 신곡은 빌보드 차트에 올랐다.",
    "대한민국의 수도는 서울이고 인구는 약 천만 명이다.",
    "날씨가 추워서 따뜻한 커피를 마셨어요.",
    "이 제품은 가격은 싸지만 품질은 별로예요.",
    "배송이 빠르고 포장도 꼼꼼해서 만족합니다.",
    "아이들은 공원에서 공을 차며 놀았다.",
    "회사는 새로운 AI 모델을 개발했다고 발표했다.",
    "경찰은 사고 원인을 조사하고 있다.",
    "연기는 좋은데 각본이 엉망이네요.",
    "두 번 보니까 더 재밌네요 ^^",
    "내일은 비가 오고 바람이 강하게 불겠습니다.",
    "선수들은 경기에서 최선을 다했다.",
    "이 책은 아이들에게 읽어 주기 좋은 동화책이다.",
    "우리 팀은 결승전에서 2대 1로 이겼다.",
    "오랜만에 가족과 함께 여행을 떠났다.",
    "정말 감동적인 영화였어요. 눈물이 났어요.",
    "한국어 자연어 처리는 형태소 분석이 중요하다.",
]
N_LINES = 200
WP_VOCAB = 800  # alphabet limit (800 - 5) // 3 = 265 > the ~250 distinct characters below
SPM_VOCAB = 280
SPM_OPTS = {"character_coverage": 0.995}


def corpus_lines(n: int = N_LINES) -> list[str]:
    """Each sentence once, then pairs of sentences (so merges have frequency >= 2)."""
    k = len(SENTS)
    return [SENTS[i] if i < k else f"{SENTS[i % k]} {SENTS[(7 * i) % k]}" for i in range(n)]


def no_spaces(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    lines = corpus_lines()
    text = "\n".join(lines) + "\n"
    (d / "comments.txt").write_text(text, encoding="utf-8")
    with gzip.open(d / "comments.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    with open(d / "comments.jsonl", "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            f.write(json.dumps({"id": i, "text": line}, ensure_ascii=False) + "\n")
    return d


@pytest.fixture(scope="module")
def wordpiece_dir(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wordpiece")
    tk.train_wordpiece([corpus_dir / "comments.txt"], out, vocab_size=WP_VOCAB, show_progress=False)
    return out


# --------------------------------------------------------------------------------------------
# WordPiece
# --------------------------------------------------------------------------------------------


def test_wordpiece_saves_standard_hf_directory(wordpiece_dir: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (wordpiece_dir / name).is_file(), name
    vocab = (wordpiece_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab)) <= WP_VOCAB
    special_map = json.loads((wordpiece_dir / "special_tokens_map.json").read_text())
    assert special_map["pad_token"] == "[PAD]" and special_map["mask_token"] == "[MASK]"
    config = json.loads((wordpiece_dir / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is False and config["strip_accents"] is False
    # Every character that can continue a word has its '##' form (no whole-word [UNK]).
    singles = {t for t in vocab if len(t) == 1 and not tk._is_standalone_char(t)}
    assert singles and all("##" + c in vocab for c in singles)


@pytest.mark.parametrize("cls_name", ["AutoTokenizer", "BertTokenizerFast", "ElectraTokenizerFast"])
def test_wordpiece_hf_round_trip_keeps_hangul(wordpiece_dir: Path, cls_name: str) -> None:
    import transformers

    tok = getattr(transformers, cls_name).from_pretrained(str(wordpiece_dir))
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1
    assert tok.cls_token_id == 2 and tok.sep_token_id == 3 and tok.mask_token_id == 4
    assert len(tok) <= WP_VOCAB
    # No NFD: Hangul syllables stay composed through normalisation.
    assert tok.backend_tokenizer.normalizer.normalize_str("안녕하세요") == "안녕하세요"
    ids = tok("안녕하세요")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "안녕하세요"
    for sent in [*SENTS, "학교에서 공부를 했다"]:
        enc = tok(sent)["input_ids"]
        assert tok.unk_token_id not in enc, (sent, tok.convert_ids_to_tokens(enc))
        assert no_spaces(tok.decode(enc, skip_special_tokens=True)) == no_spaces(sent)
    batch = tok(["안녕하세요", SENTS[0]], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0


def test_load_tokenizer_on_trained_wordpiece(wordpiece_dir: Path) -> None:
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(wordpiece_dir))
    for path in (wordpiece_dir, wordpiece_dir / "vocab.txt", wordpiece_dir / "tokenizer.json"):
        tok = tk.load_tokenizer(path)
        assert tok.pad_token_id == 0, path
        for sent in SENTS[:5]:
            assert tok(sent)["input_ids"] == ref(sent)["input_ids"], path


def test_wordpiece_from_gz_and_jsonl(corpus_dir: Path, tmp_path: Path) -> None:
    expected = corpus_lines()
    for name in ("comments.txt", "comments.txt.gz", "comments.jsonl"):
        assert list(tk.iter_text_lines([corpus_dir / name])) == expected, name
    files = [corpus_dir / "comments.txt.gz", corpus_dir / "comments.jsonl"]
    assert len(list(tk.iter_text_lines(files, limit_lines=250))) == 250
    out = tmp_path / "wp"
    tok = tk.train_wordpiece(files, out, vocab_size=WP_VOCAB, limit_lines=300, show_progress=False)
    assert json.loads((out / "kdjax_tokenizer.json").read_text())["lines"] == 300
    assert len(tok) <= WP_VOCAB and tok.pad_token_id == 0
    ids = tok("안녕하세요 학교에서")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "안녕하세요 학교에서"


def test_iter_text_lines_formats_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "a.jsonl"
    good.write_text(
        '{"text": "첫 줄\\n둘째 줄"}\n\n{"text": null}\n{"text": "  셋째 줄 "}\n', encoding="utf-8"
    )
    assert list(tk.iter_text_lines([good])) == ["첫 줄", "둘째 줄", "셋째 줄"]
    assert list(tk.iter_text_lines([good], limit_lines=1)) == ["첫 줄"]

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "좋아요"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        list(tk.iter_text_lines([bad_json]))
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"body": "좋아요"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="'text' field"):
        list(tk.iter_text_lines([no_field]))
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported corpus file"):
        list(tk.iter_text_lines([csv]))
    with pytest.raises(DataError, match="does not exist"):
        list(tk.iter_text_lines([tmp_path / "missing.txt"]))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        list(tk.iter_text_lines([latin1]))


def test_wordpiece_bad_arguments(corpus_dir: Path, tmp_path: Path) -> None:
    files = [corpus_dir / "comments.txt"]
    with pytest.raises(ConfigError, match="vocab_size"):
        tk.train_wordpiece(files, tmp_path / "a", vocab_size=5, show_progress=False)
    with pytest.raises(ConfigError, match="special_tokens"):
        tk.train_wordpiece(files, tmp_path / "b", special_tokens=("[PAD]", "[UNK]"))
    with pytest.raises(ConfigError, match="limit_alphabet"):  # alphabet cannot fit
        tk.train_wordpiece(
            files, tmp_path / "c", vocab_size=100, limit_alphabet=1000, show_progress=False
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋아요"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'text' is int"):
        tk.train_wordpiece([bad], tmp_path / "e", vocab_size=100, show_progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        tk.train_wordpiece([empty], tmp_path / "d", vocab_size=100, show_progress=False)


# --------------------------------------------------------------------------------------------
# Morphemes
# --------------------------------------------------------------------------------------------


def test_morpheme_split_surface_morphemes() -> None:
    assert tk.morpheme_split("학교에서") == "학교 에서"
    assert tk.morpheme_split("학교에서 공부를 했다") == "학교 에서 공부 를 했 다"
    assert tk.morpheme_split("학교에서 공부를", sep="|") == "학교|에서 공부|를"
    assert tk.morpheme_split("   ") == ""
    # Surface forms are kept: the characters never change, only spaces are added.
    for sent in SENTS:
        assert no_spaces(tk.morpheme_split(sent)) == no_spaces(sent)
    assert list(tk.iter_morpheme_split(["학교에서", "공부를"], batch_size=1)) == [
        "학교 에서",
        "공부 를",
    ]


def test_morpheme_pretokenize_changes_vocab(
    corpus_dir: Path, wordpiece_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "wp_morph"
    tok = tk.train_wordpiece(
        [corpus_dir / "comments.txt"],
        out,
        vocab_size=WP_VOCAB,
        morpheme_pretokenize=True,
        show_progress=False,
    )
    plain = set((wordpiece_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())
    morph = set((out / "vocab.txt").read_text(encoding="utf-8").splitlines())
    assert plain != morph and len(morph) <= WP_VOCAB
    # The particle '에서' is a unit of its own only when training text is split into morphemes;
    # without it, it is only learned glued to a word start ('##에서').
    assert "에서" in morph and "에서" not in plain and "##에서" in plain
    # Raw text (no morpheme analysis at inference) still encodes without [UNK].
    for sent in [*SENTS, "학교에서 공부를 했다"]:
        ids = tok(sent)["input_ids"]
        assert tok.unk_token_id not in ids, (sent, tok.convert_ids_to_tokens(ids))
        assert no_spaces(tok.decode(ids, skip_special_tokens=True)) == no_spaces(sent)


def test_missing_kiwipiepy_raises_config_error(
    monkeypatch: pytest.MonkeyPatch, corpus_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(tk, "_KIWI", None)
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # makes `import kiwipiepy` fail
    with pytest.raises(ConfigError, match=r"pip install kdjax\[korean\]"):
        tk.morpheme_split("학교에서")
    with pytest.raises(ConfigError, match="kiwipiepy"):
        tk.train_wordpiece([corpus_dir / "comments.txt"], tmp_path / "x", morpheme_pretokenize=True)


# --------------------------------------------------------------------------------------------
# SentencePiece
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_train_load_encode(corpus_dir: Path, tmp_path: Path, model_type: str) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = tmp_path / "spm"
    tok = tk.train_sentencepiece(
        [corpus_dir / "comments.txt"],
        out,
        vocab_size=SPM_VOCAB,
        model_type=model_type,
        show_progress=False,
        **SPM_OPTS,
    )
    for name in ("spm.model", "spm.vocab", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    proc = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert proc.get_piece_size() == len(tok) == SPM_VOCAB
    assert [proc.id_to_piece(i) for i in range(5)] == list(tk.DEFAULT_SPECIAL_TOKENS)

    loaded = [
        tok,
        tk.load_tokenizer(out),
        tk.load_tokenizer(out / "spm.model"),
        AutoTokenizer.from_pretrained(str(out)),
    ]
    for hf in loaded:
        assert hf.pad_token_id == 0 and hf.cls_token == "[CLS]" and hf.mask_token_id == 4
        for sent in SENTS:
            # Same ids as SentencePiece itself, wrapped in [CLS] ... [SEP].
            assert hf(sent)["input_ids"] == [2, *proc.encode(sent), 3], sent
        ids = hf("안녕하세요 학교에서")["input_ids"]
        assert hf.decode(ids, skip_special_tokens=True) == "안녕하세요 학교에서"


def test_sentencepiece_morphemes(corpus_dir: Path, tmp_path: Path) -> None:
    plain = tk.train_sentencepiece(
        [corpus_dir / "comments.txt"],
        tmp_path / "a",
        vocab_size=SPM_VOCAB,
        show_progress=False,
        **SPM_OPTS,
    )
    morph = tk.train_sentencepiece(
        [corpus_dir / "comments.txt"],
        tmp_path / "b",
        vocab_size=SPM_VOCAB,
        morpheme_pretokenize=True,
        show_progress=False,
        **SPM_OPTS,
    )
    pieces = set(morph.get_vocab())
    assert pieces != set(plain.get_vocab())
    assert not any(tk._SPM_MORPHEME_DELIMITER in p for p in pieces)
    ids = morph("학교에서 공부를 했다")["input_ids"]
    assert morph.decode(ids, skip_special_tokens=True) == "학교에서 공부를 했다"


def test_sentencepiece_errors(corpus_dir: Path, tmp_path: Path) -> None:
    files = [corpus_dir / "comments.txt"]
    with pytest.raises(DataError, match="vocab_size=5000 is too large"):
        tk.train_sentencepiece(files, tmp_path / "a", vocab_size=5000, show_progress=False)
    with pytest.raises(ConfigError, match="model_type"):
        tk.train_sentencepiece(files, tmp_path / "b", vocab_size=100, model_type="char")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋아요"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):  # our error, not SentencePiece's
        tk.train_sentencepiece([bad], tmp_path / "c", vocab_size=100, show_progress=False)


# --------------------------------------------------------------------------------------------
# load_tokenizer
# --------------------------------------------------------------------------------------------


def test_load_tokenizer_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no tokenizer files .*tokenizer\.json, vocab\.txt"):
        tk.load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        tk.load_tokenizer(tmp_path / "nope")


def test_load_tokenizer_keeps_hangul_for_kr_electra_style_dir(
    wordpiece_dir: Path, tmp_path: Path
) -> None:
    # A KR-ELECTRA-like checkpoint directory: vocab.txt + config.json, no tokenizer_config.json.
    # transformers then defaults to do_lower_case=True, whose accent stripping decomposes Hangul.
    (tmp_path / "vocab.txt").write_bytes((wordpiece_dir / "vocab.txt").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "electra"}))
    tok = tk.load_tokenizer(tmp_path)
    norm = tok.backend_tokenizer.normalizer
    assert norm.strip_accents is False and norm.lowercase is False  # the vocab is cased
    assert norm.normalize_str("안녕하세요 BTS") == "안녕하세요 BTS"
    ids = tok("안녕하세요 BTS")["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "안녕하세요 BTS"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdjax")
    subparsers = parser.add_subparsers(dest="command", required=True)
    tk.add_tokenizer_cli(subparsers)
    return parser


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_cli_train_end_to_end(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    out = tmp_path / "tok"
    vocab = WP_VOCAB if kind == "wordpiece" else SPM_VOCAB
    argv = ["tokenizer", "train", "--files", str(corpus_dir / "*.txt*"), "--out", str(out)]
    argv += ["--kind", kind, "--vocab_size", str(vocab), "--limit_lines", "300", "--no_progress"]
    if kind == "sentencepiece":
        argv += ["--character_coverage", "0.995"]
    args = make_parser().parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kind"] == kind and summary["out"] == str(out)
    assert 0 < summary["vocab_size"] <= vocab
    meta = json.loads((out / "kdjax_tokenizer.json").read_text())
    assert meta["lines"] == 300
    assert [Path(f).name for f in meta["files"]] == ["comments.txt", "comments.txt.gz"]
    tok = tk.load_tokenizer(out)
    assert len(tok) == summary["vocab_size"] and tok.pad_token_id == 0
    ids = tok("안녕하세요")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "안녕하세요"


def test_cli_glob_without_match_raises(corpus_dir: Path, tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing-*.txt")
    out = tmp_path / "out"
    args = make_parser().parse_args(
        ["tokenizer", "train", "--files", str(corpus_dir / "*.txt"), pattern, "--out", str(out)]
    )
    with pytest.raises(DataError, match="nothing-"):
        tk.run_tokenizer_cli(args)
    assert not out.exists()
    with pytest.raises(DataError, match="matched no file"):
        tk.expand_globs([str(tmp_path / "missing.txt")])
    assert tk.expand_globs([str(corpus_dir)]) == [
        str(corpus_dir / n) for n in ("comments.jsonl", "comments.txt", "comments.txt.gz")
    ]


def test_cli_requires_subcommand() -> None:
    with pytest.raises(SystemExit):
        make_parser().parse_args(["tokenizer"])
