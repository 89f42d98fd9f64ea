"""The paper's table, scaled down to a laptop CPU: pre-train -> distill -> fine-tune -> report.

    python bench/korean_table.py --data_dir ../shared/data/ko --budget-minutes 60

Stages (each resumable: re-running the command skips what is finished in --workdir):

1. teacher: ELECTRA pre-training (generator + discriminator) of a small teacher on
   `DATA_DIR/corpus/ko_corpus.txt.gz`, with a WordPiece vocabulary trained on the same text.
2. students: task-agnostic distillation (objective `paper_kd`) of four students whose shapes
   follow the paper's KD / LF-V1 / LF-V2 / LF-V3 ladder at this scale: a dense ELECTRA-Small-
   like student (half the teacher's width, quarter-width embeddings + embeddings_project), then
   low-rank FFN (V1), + low-rank Q/K/V/O (V2), + low-rank word embedding (V3). As in the paper,
   the factorized students start from the KD student (SVD to their ranks) and are distilled
   further.
3. fine-tuning: the teacher and every student on the seven tasks with `kdjax evaluate` (best
   checkpoint on dev, or held-out train; scores on test), then the report: sizes, compression,
   scores, average, % of the teacher, sentences/s and speed-up, and the non-neural baseline
   row (n-gram TF-IDF + linear models on the same examples; every score below it marked).

`--budget-minutes` scales every stage's step count and the fine-tuning data limits from the
figures measured on a 2-core CPU (about 40 % of the budget on pre-training + distillation,
60 % on the 35 fine-tuning runs). The printed table is the report; it is also written to
WORKDIR/report/{report.md,report.json,report.png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Shapes. The paper: teacher 12 x 768 (E 768); KD student 12 x 256, 4 heads, E 128 (8.1x);
# LF-V1 FFN rank 56, LF-V2 + attention rank 64, LF-V3 + word-embedding rank 32 (24x). Here the
# teacher is 4 x 128 (E 128) and the students 4 x 64 (E 32), ranks scaled with the width.
VOCAB = 8000
TEACHER = dict(vocab_size=VOCAB, hidden_size=128, num_layers=4, num_heads=4,
               intermediate_size=512, embedding_size=128, max_position_embeddings=128,
               head="discriminator")
GENERATOR = dict(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=2,
                 intermediate_size=256, embedding_size=128, max_position_embeddings=128,
                 head="generator")
KD = dict(vocab_size=VOCAB, hidden_size=64, num_layers=4, num_heads=2, intermediate_size=256,
          embedding_size=32, max_position_embeddings=128, head="discriminator")
STUDENTS = {
    "kd": {},
    "lf_v1": {"ffn_rank": 14},
    "lf_v2": {"ffn_rank": 14, "attention_rank": 16},
    "lf_v3": {"ffn_rank": 14, "attention_rank": 16, "embedding_rank": 8},
}
# Step counts and data limits at --budget-minutes 60 (scaled linearly with the budget).
# Fine-tuning: the KoELECTRA-base settings (lr 5e-5, 10+ epochs on full data) do not move models
# this small in a few hundred steps (NSMC stays at chance), so the table uses lr 1e-3 with 10%
# warmup, 3 epochs over at most `train_limit` rows (KorQuAD: `korquad_train_limit` questions).
BASE = {"pretrain_steps": 800, "kd_steps": 400, "lf_steps": 200, "train_limit": 3000,
        "eval_limit": 1000, "korquad_train_limit": 1000, "korquad_eval_limit": 500,
        "epochs": 3, "lr": 1e-3, "max_length": 64, "korquad_max_length": 128}


def _log(msg: str) -> None:
    print(f"[korean_table {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def plan(budget_minutes: float) -> dict[str, int]:
    scale = max(0.05, budget_minutes / 60.0)
    return {
        "pretrain_steps": max(20, int(BASE["pretrain_steps"] * scale)),
        "kd_steps": max(10, int(BASE["kd_steps"] * scale)),
        "lf_steps": max(10, int(BASE["lf_steps"] * scale)),
        "train_limit": max(64, int(BASE["train_limit"] * min(1.0, scale))),
        "eval_limit": max(64, int(BASE["eval_limit"] * min(1.0, scale))),
        "korquad_train_limit": max(32, int(BASE["korquad_train_limit"] * min(1.0, scale))),
        "korquad_eval_limit": max(32, int(BASE["korquad_eval_limit"] * min(1.0, scale))),
        "epochs": BASE["epochs"],
        "lr": BASE["lr"],
        "max_length": BASE["max_length"],
        "korquad_max_length": BASE["korquad_max_length"],
    }


def pretrain_teacher(root: Path, corpus: str, steps: int, progress: bool) -> Path:
    import ml_collections

    from kdjax.config_lib import data_config, mesh_config, model_config, train_config
    from kdjax.modeldir import find_model_dir
    from kdjax.train.pretrain_distill import train

    workdir = root / "teacher"
    if find_model_dir(workdir) is not None:
        _log(f"teacher: reusing {workdir}")
        return workdir
    config = ml_collections.ConfigDict({
        "name": "korean_table_teacher",
        "discriminator": {"model": model_config(**TEACHER)},
        "generator": {"model": model_config(**GENERATOR)},
        "pretrain": {"disc_weight": 50.0, "temperature": 1.0},
        "data": data_config(files=corpus, max_length=128, vocab_size=VOCAB,
                            tokenizer_lines=200_000, limit_lines=300_000),
        "train": train_config(steps=steps, batch_size=32, log_every=50,
                              save_every=max(50, steps // 4), lr=1e-3, warmup_steps=0.05),
        "mesh": mesh_config(),
    })
    _log(f"teacher: ELECTRA pre-training {steps} steps -> {workdir}")
    train(config, workdir, "pretrain", progress=progress)
    return workdir


def distill_student(root: Path, name: str, teacher: Path, corpus: str, steps: int,
                    init_from: Path | None, progress: bool) -> Path:
    import ml_collections

    from kdjax.config_lib import data_config, load_config, mesh_config, model_config, train_config
    from kdjax.modeldir import find_model_dir
    from kdjax.train.pretrain_distill import train

    workdir = root / name
    if find_model_dir(workdir) is not None:
        _log(f"{name}: reusing {workdir}")
        return workdir
    config = ml_collections.ConfigDict({
        "name": f"korean_table_{name}",
        "teacher": {"path": str(teacher), "init": "", "dtype": "",
                    "model": model_config(**TEACHER)},
        "student": {"model": model_config(**KD, **STUDENTS[name]), "init": "random"},
        "objective": load_config(str(REPO / "configs" / "objectives" / "paper_kd.py")),
        "data": data_config(files=corpus, max_length=128, limit_lines=300_000),
        "train": train_config(steps=steps, batch_size=32, log_every=50,
                              save_every=max(50, steps // 4), lr=1e-3, warmup_steps=0.05),
        "mesh": mesh_config(),
    })
    if init_from is not None:  # the paper's LF students start from the KD student
        config.student.init = str(init_from / "model")
    _log(f"{name}: distilling {steps} steps -> {workdir}")
    train(config, workdir, "distill", progress=progress)
    return workdir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="the Korean data folder (../shared/data/ko)")
    p.add_argument("--budget-minutes", type=float, default=60.0)
    p.add_argument("--workdir", default="kdjax-korean-table")
    p.add_argument("--tasks", default="all")
    p.add_argument("--stages", default="pretrain,distill,evaluate",
                   help="stop early with e.g. pretrain,distill (a later full run resumes)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-baseline", action="store_true",
                   help="no non-neural baseline row in the report (it needs scikit-learn)")
    args = p.parse_args(argv)

    from kdjax.cli import enable_compilation_cache
    from kdjax.eval.evaluate import evaluate_models

    enable_compilation_cache()
    data_dir = Path(args.data_dir)
    corpus = data_dir / "corpus" / "ko_corpus.txt.gz"
    if not corpus.is_file():
        p.error(f"{corpus} not found: --data_dir must be the Korean data folder "
                "(with corpus/, nsmc/, ...)")
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    budget = plan(args.budget_minutes)
    _log(f"plan for {args.budget_minutes:g} min: {json.dumps(budget)}")
    progress = not args.no_progress
    t0 = time.perf_counter()

    teacher = pretrain_teacher(root, str(corpus), budget["pretrain_steps"], progress)
    models = {"teacher": teacher}
    kd = distill_student(root, "kd", teacher, str(corpus), budget["kd_steps"], None, progress)
    models["kd"] = kd
    for name in ("lf_v1", "lf_v2", "lf_v3"):
        models[name] = distill_student(root, name, teacher, str(corpus), budget["lf_steps"],
                                       kd, progress)
    t1 = time.perf_counter()
    _log(f"pre-training + distillation: {(t1 - t0) / 60:.1f} min")
    if "evaluate" not in args.stages.split(","):
        return 0

    overrides = [f"task.limit_train={budget['train_limit']}",
                 f"task.limit_eval={budget['eval_limit']}",
                 f"train.epochs={budget['epochs']}", f"train.lr={budget['lr']}",
                 "train.warmup_steps=0.1",
                 f"korquad.task.limit_train={budget['korquad_train_limit']}",
                 f"korquad.task.limit_eval={budget['korquad_eval_limit']}",
                 f"task.max_length={budget['max_length']}",
                 f"korquad.task.max_length={budget['korquad_max_length']}"]
    report = evaluate_models(
        [str(m) for m in models.values()], args.tasks, str(data_dir), str(root / "report"),
        names=list(models), teacher="teacher", overrides=overrides, progress=progress,
        baseline=not args.no_baseline,
    )
    files = report["files"]
    t2 = time.perf_counter()
    _log(f"fine-tuning + report: {(t2 - t1) / 60:.1f} min; total {(t2 - t0) / 60:.1f} min")
    print(Path(files["md"]).read_text(), flush=True)
    verdict = report.get("claim_97", {})
    if verdict:
        _log(f"claim (every student >= 97% of the teacher's average): {verdict}")
    if report.get("baseline"):
        _log(f"below the non-neural baseline (model: tasks): "
             f"{json.dumps(report['below_baseline']) if report['below_baseline'] else 'none'}")
    _log(f"written: {json.dumps(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
