"""KR-ELECTRA-base -> the paper's students, task-agnostic distillation on a Korean corpus.

Select the student with the argument: `distill_paper.py:lf_v3` (default), `:kd_small`,
`:lf_v1`, `:lf_v2`, `:kominilm_23m`, `:tinybert_4l`, and optionally the objective recipe
(configs/objectives/NAME.py, default paper_kd) after a comma: `distill_paper.py:lf_v3,ckd`.

Required: --config.teacher.path=DIR (an HF KR-ELECTRA discriminator directory or a kdjax
pretrain workdir) and --config.data.files=... (text files, globs or hf:NAME).
Example (one TPU v4-32 slice, see launch/README.md):
  kdjax distill --config configs/distill_paper.py:lf_v3 --workdir gs://BUCKET/runs/lf_v3 \\
    --config.teacher.path=/path/to/KR-ELECTRA-discriminator \\
    --config.data.files='gs://BUCKET/corpus/*.txt.gz' --config.train.batch_size=256
"""

import ml_collections

from kdjax.config_lib import data_config, mesh_config, sibling, train_config

OBJECTIVE = "paper_kd"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    student, _, objective = (arg or "lf_v3").partition(",")
    student_model = sibling(__file__, f"{student}.py").model
    if student_model.head == "none":  # logit KD needs the discriminator head
        student_model.head = "discriminator"
    return ml_collections.ConfigDict({
        "name": f"distill_paper_{student}",
        "teacher": {"path": "", "init": "", "dtype": "bfloat16",
                    "model": sibling(__file__, "kr_electra_base.py").model},
        "student": {"model": student_model, "init": "random"},
        "objective": sibling(__file__, f"objectives/{objective or OBJECTIVE}.py"),
        "data": data_config(files="", max_length=128),
        "train": train_config(steps=100_000, batch_size=256, log_every=100, save_every=2000,
                              lr=5e-4, warmup_steps=0.05, keep=3, keep_period=20_000),
        "mesh": mesh_config(),
    })
