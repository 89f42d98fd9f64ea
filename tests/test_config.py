"""Configuration: `EncoderConfig` validation, the shipped size configs (`kdjax params`) against
the paper's sizes and a closed-form parameter count, and `kdjax.config_lib` (config files,
`path:arg`, `sibling`, `--config.a.b=value` overrides)."""

from __future__ import annotations

import json
import math
import textwrap

import jax
import ml_collections
import pytest

from kdjax.cli import main
from kdjax.config_lib import (
    CONFIG_DIR,
    apply_overrides,
    load_config,
    model_config,
    resolve_config_path,
)
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import abstract_params

TINY = dict(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
            embedding_size=8, max_position_embeddings=16)


def tiny(**changes) -> EncoderConfig:
    return EncoderConfig(**{**TINY, **changes})


# --------------------------------------------------------------------------------------------
# 9. EncoderConfig validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, key",
    [
        (dict(hidden_size=18, num_heads=4), "model.hidden_size"),
        # ranks larger than the matrix they factor: [H=16, I=32], [H, H], [V=64, E=8]
        (dict(ffn_rank=17), "model.ffn_rank"),
        (dict(ffn_rank=17, intermediate_size=12), "model.ffn_rank"),
        (dict(attention_rank=17), "model.attention_rank"),
        (dict(embedding_rank=9), "model.embedding_rank"),
        (dict(embedding_rank=7, vocab_size=6), "model.embedding_rank"),
        (dict(ffn_rank=-1), "model.ffn_rank"),
        (dict(attention_rank=-4), "model.attention_rank"),
        (dict(embedding_rank=-1), "model.embedding_rank"),
        (dict(embedding_size=-1), "model.embedding_size"),
        (dict(head="mlm"), "model.head"),
        (dict(family="roberta"), "model.family"),
        (dict(hidden_act="swish"), "model.hidden_act"),
        (dict(dtype="float64"), "model.dtype"),
        (dict(param_dtype="bf16"), "model.param_dtype"),
        (dict(attention_impl="flash"), "model.attention_impl"),
        (dict(hidden_dropout=1.0), "model.hidden_dropout"),
        (dict(hidden_dropout=-0.1), "model.hidden_dropout"),
        (dict(attention_dropout=1.5), "model.attention_dropout"),
        (dict(num_layers=True), "model.num_layers"),  # a bool is not an int here
        (dict(hidden_size=16.0), "model.hidden_size"),
        (dict(ffn_rank=False), "model.ffn_rank"),
        (dict(vocab_size=0), "model.vocab_size"),
        (dict(max_position_embeddings=-512), "model.max_position_embeddings"),
        (dict(head="classification", num_labels=0), "model.num_labels"),
        (dict(layer_norm_eps=0.0), "model.layer_norm_eps"),
    ],
)
def test_invalid_config_names_the_key(changes, key):
    with pytest.raises(ConfigError) as e:
        tiny(**changes)
    msg = str(e.value)
    assert key in msg, msg
    assert "\n" not in msg  # one line for the CLI


@pytest.mark.parametrize(
    "changes",
    [
        dict(ffn_rank=16),  # rank == the smaller side of [16, 32]: allowed (full rank)
        dict(attention_rank=16),
        dict(embedding_rank=8),
        dict(embedding_size=24),  # E > H: the ELECTRA generator sharing wider embeddings
        dict(embedding_size=0),  # 0 = hidden_size
        dict(hidden_dropout=0.0, attention_dropout=0.99),
        dict(head="qa", family="bert", dtype="bfloat16", hidden_act="gelu_new"),
    ],
)
def test_valid_edge_cases(changes):
    cfg = tiny(**changes)
    assert cfg.emb_size == (changes.get("embedding_size", 8) or 16)


def test_derived_values():
    cfg = tiny(embedding_size=0, ffn_rank=4, classifier_dropout=-1.0, hidden_dropout=0.3)
    assert (cfg.emb_size, cfg.head_dim, cfg.is_factorized, cfg.cls_dropout) == (16, 8, True, 0.3)
    assert tiny(classifier_dropout=0.05).cls_dropout == 0.05
    assert not tiny().is_factorized
    with pytest.raises(ConfigError, match="model.ffn_rank"):  # replace() validates too
        tiny().replace(ffn_rank=100)


def test_from_any():
    cfg = tiny()
    assert EncoderConfig.from_any(cfg) is cfg
    assert EncoderConfig.from_any(dict(TINY)) == cfg
    assert EncoderConfig.from_any(ml_collections.ConfigDict(TINY)) == cfg
    assert EncoderConfig.from_any(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="model.hiden_size"):  # a typo is not a default
        EncoderConfig.from_any({**TINY, "hiden_size": 16})
    with pytest.raises(ConfigError, match="model.ffn_rank"):
        EncoderConfig.from_any({**TINY, "ffn_rank": 1000})
    with pytest.raises(ConfigError, match="mapping"):
        EncoderConfig.from_any([1, 2])


def test_model_config_validates_at_load_time():
    section = model_config(**TINY)
    assert EncoderConfig.from_any(section) == tiny()
    assert set(section) == {f for f in EncoderConfig.__dataclass_fields__}
    with pytest.raises(ConfigError, match="hiden_size"):
        model_config(hiden_size=16)
    with pytest.raises(ConfigError, match="model.num_heads"):
        model_config(**{**TINY, "num_heads": 3})


# Validation gaps (see the report); strict, so fixing them turns these into failures to remove.
def test_classifier_dropout_out_of_range():
    with pytest.raises(ConfigError, match="model.classifier_dropout"):
        tiny(classifier_dropout=1.5)


def test_num_labels_must_be_an_int():
    with pytest.raises(ConfigError, match="model.num_labels"):
        tiny(head="classification", num_labels=True)


def test_flags_must_be_bools():
    with pytest.raises(ConfigError, match="model.remat"):
        tiny(remat="no")


def test_string_dropout_is_a_config_error():
    with pytest.raises(ConfigError, match="model.hidden_dropout"):
        tiny(hidden_dropout="0.1")


# --------------------------------------------------------------------------------------------
# 10. `kdjax params` on the shipped size configs
# --------------------------------------------------------------------------------------------


def closed_form(cfg: EncoderConfig) -> dict[str, int]:
    """Parameter count by part, from the architecture (independent of the Flax modules)."""
    v, h, i, e, n = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.emb_size,
                     cfg.num_layers)

    def proj(d_in: int, d_out: int, rank: int) -> int:
        return (d_in * rank + rank * d_out if rank else d_in * d_out) + d_out

    r = cfg.embedding_rank
    words = v * r + r * e if r else v * e
    emb = words + (cfg.max_position_embeddings + cfg.type_vocab_size) * e + 2 * e
    if e != h:
        emb += e * h + h  # embeddings_project
    attention = n * (4 * proj(h, h, cfg.attention_rank) + 2 * h)
    ffn = n * (proj(h, i, cfg.ffn_rank) + proj(i, h, cfg.ffn_rank) + 2 * h)
    c = cfg.num_labels
    heads = {
        "none": 0,
        "discriminator": h * h + h + h + 1,
        "generator": h * e + e + 2 * e + v,  # dense + LayerNorm + output bias (tied weights)
        "classification": h * h + h + h * c + c,
        "token_classification": h * c + c,
        "qa": 2 * h + 2,
    }[cfg.head]
    return {"embeddings": emb, "attention": attention, "ffn": ffn, "heads": heads}


# name -> (target fp32 MB, relative tolerance) from the issue / paper, or None
SIZES = {
    "kr_electra_base": (432, 0.03),
    "kr_electra_generator": None,
    "kd_small": (53, 0.10),
    "lf_v1": (35, 0.10),
    "lf_v2": (30, 0.10),
    "lf_v3": (18, 0.10),
    "kominilm_23m": None,
    "tinybert_4l": None,
    "debug": None,
    "debug.py:student": None,
}


def params_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["params", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    return {}


@pytest.mark.parametrize("name", list(SIZES))
def test_params_command(name, capsys, reports):
    spec = name if ":" in name else f"configs/{name}.py"
    code, out, err = params_cli(capsys, "--config", spec)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    report = json.loads(lines[0])
    assert list(report)[:2] == ["params", "fp32_mb"]
    parts = report["breakdown"]
    assert set(parts) == {"embeddings", "attention", "ffn", "heads"}
    assert sum(parts.values()) == report["params"]
    assert report["fp32_mb"] == pytest.approx(report["params"] * 4 / 1e6, abs=0.005)

    cfg = EncoderConfig.from_any(load_config(spec).model)
    assert parts == closed_form(cfg)
    scalars = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract_params(cfg)))
    assert report["params"] == scalars
    if SIZES[name] is not None:
        target, tol = SIZES[name]
        assert report["fp32_mb"] == pytest.approx(target, rel=tol), report["fp32_mb"]
    reports[name] = report


def test_named_model_sizes(reports):
    if len(reports) < len(SIZES):
        pytest.skip("needs every test_params_command case in this run")
    assert reports["kominilm_23m"]["params"] == pytest.approx(23e6, rel=0.05)
    assert reports["tinybert_4l"]["params"] == pytest.approx(14.1e6, rel=0.02)
    # each LF step adds one more factorized part and strictly shrinks the model
    mb = [reports[n]["fp32_mb"] for n in ("kr_electra_base", "kd_small", "lf_v1", "lf_v2", "lf_v3")]
    assert mb == sorted(mb, reverse=True) and len(set(mb)) == len(mb)
    ranks = [reports[n]["ranks"] for n in ("kd_small", "lf_v1", "lf_v2", "lf_v3")]
    assert [sum(bool(v) for v in r.values()) for r in ranks] == [0, 1, 2, 3]
    # the factorization touches only its own part
    assert reports["lf_v1"]["breakdown"]["attention"] == reports["kd_small"]["breakdown"][
        "attention"]
    assert reports["lf_v2"]["breakdown"]["ffn"] == reports["lf_v1"]["breakdown"]["ffn"]
    assert reports["lf_v3"]["breakdown"]["attention"] == reports["lf_v2"]["breakdown"][
        "attention"]


@pytest.mark.parametrize("form", ["equals", "space"])
def test_params_override(form, capsys):
    args = (["--config.model.ffn_rank=8"] if form == "equals"
            else ["--config.model.ffn_rank", "8"])
    code, out, err = params_cli(capsys, "--config", "configs/kd_small.py", *args)
    assert code == 0, err
    report = json.loads(out)
    assert report["ranks"]["ffn"] == 8
    cfg = EncoderConfig.from_any(load_config("kd_small").model).replace(ffn_rank=8)
    assert report["breakdown"] == closed_form(cfg)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config", "configs/lf_v1.py", "--config.model.ffn_rank=5000"], "model.ffn_rank"),
        (["--config", "configs/lf_v1.py", "--config.model.ffn_rnak=8"], "model.ffn_rnak"),
        (["--config", "configs/lf_v1.py", "--config.modle.ffn_rank=8"], "modle"),
        (["--config", "configs/lf_v1.py", "--config.model.ffn_rank=8.5"], "model.ffn_rank"),
        (["--config", "configs/no_such_config.py"], "no_such_config"),
    ],
)
def test_params_errors_exit_2_with_one_line(args, needle, capsys):
    code, out, err = params_cli(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kdjax: error: ") and needle in lines[0], lines[0]


# --------------------------------------------------------------------------------------------
# 11. kdjax.config_lib
# --------------------------------------------------------------------------------------------


BASE_FILE = textwrap.dedent("""
    import ml_collections

    def get_config(arg=None):
        return ml_collections.ConfigDict({
            "name": arg or "default", "i": 1, "f": 0.5, "b": False, "t": (1, 2), "s": "x",
            "n": None, "nested": {"k": 3, "deeper": {"z": 1.5}},
        })
""")

CHILD_FILE = textwrap.dedent("""
    from kdjax.config_lib import sibling

    def get_config():
        config = sibling(__file__, "base.py:from_child")
        config.i = 100
        return config
""")


@pytest.fixture()
def config_dir(tmp_path):
    (tmp_path / "base.py").write_text(BASE_FILE)
    (tmp_path / "child.py").write_text(CHILD_FILE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "empty.py").write_text("X = 1\n")
    return tmp_path


def test_load_config_and_arg(config_dir):
    base = load_config(config_dir / "base.py")
    assert isinstance(base, ml_collections.ConfigDict)
    assert base.name == "default" and base.nested.k == 3
    assert load_config(f"{config_dir / 'base.py'}:small").name == "small"
    assert load_config(config_dir / "base").name == "default"  # .py may be left out


def test_sibling(config_dir):
    child = load_config(config_dir / "child.py")
    assert child.name == "from_child" and child.i == 100
    # every load is fresh: the child's edits do not leak into the base
    assert load_config(config_dir / "base.py").i == 1


def test_overrides_parse_by_existing_type(config_dir):
    config = load_config(config_dir / "base.py", [
        "i=7", "f=2", "b=true", "t=(3, 4, 5)", "s=123", "n=[1, 2]", "nested.k=9",
        "--config.nested.deeper.z=1e-3",
    ])
    assert config.i == 7 and type(config.i) is int
    assert config.f == 2.0 and type(config.f) is float
    assert config.b is True
    assert config.t == (3, 4, 5) and isinstance(config.t, tuple)
    assert config.s == "123"  # a string field stays a string
    assert config.n == [1, 2]  # None: any literal
    assert config.nested.k == 9 and config.nested.deeper.z == 1e-3
    more = apply_overrides(load_config(config_dir / "base.py"),
                           ["b=0", "t=[8]", "n=not a literal", "f=0.25"])
    assert more.b is False and more.t == (8,) and more.n == "not a literal" and more.f == 0.25


@pytest.mark.parametrize(
    "override, needle",
    [
        ("zz=1", "zz"),
        ("nested.zz=1", "nested.zz"),
        ("nope.k=1", "nope"),
        ("i=1.5", "i"),
        ("i=abc", "i"),
        ("f=yes", "f"),
        ("b=maybe", "b"),
        ("t=5", "t"),
        ("nested=3", "nested"),
        ("i", "key.sub=value"),
    ],
)
def test_bad_overrides(override, needle, config_dir):
    with pytest.raises(ConfigError) as e:
        load_config(config_dir / "base.py", [override])
    assert needle in str(e.value)


def test_config_file_errors(config_dir):
    with pytest.raises(ConfigError, match="broken.py.*boom"):
        load_config(config_dir / "broken.py")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(config_dir / "empty.py")
    with pytest.raises(ConfigError, match="not found"):
        load_config(config_dir / "missing.py")


def test_bundled_configs_by_name():
    path, arg = resolve_config_path("debug:student")
    assert path == CONFIG_DIR / "debug.py" and arg == "student"
    student = load_config("debug:student")
    assert student.model.ffn_rank > 0 and student.name == "debug_student"
    assert load_config("debug").model.ffn_rank == 0
    # the LF chain extends kd_small via sibling() and adds one rank per step
    lf_v3 = load_config("lf_v3").model
    assert (lf_v3.ffn_rank, lf_v3.attention_rank, lf_v3.embedding_rank) == (56, 64, 32)
    assert load_config("kd_small").model.ffn_rank == 0


def test_int_override_rejects_a_bool(config_dir):
    with pytest.raises(ConfigError, match="i"):
        load_config(config_dir / "base.py", ["i=True"])


def test_arg_for_a_config_without_args_is_a_config_error(config_dir):
    with pytest.raises(ConfigError, match="empty_args.py"):
        (config_dir / "empty_args.py").write_text(
            "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict()\n")
        load_config(f"{config_dir / 'empty_args.py'}:x")
