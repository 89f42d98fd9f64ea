"""KR-ELECTRA-base (teacher, 109M) -> KR-ELECTRA-Small-LF-V3 (student, 4.5M) on a Korean
corpus: the task-agnostic distillation recipe launch/README.md runs on a Cloud TPU v4-32.

Paths are relative to the directory kdjax runs in (launch/setup.sh's remote dir, where
`--stage` puts them) or absolute:
  teacher.path   an HF KR-ELECTRA discriminator directory (config.json + model.safetensors or
                 pytorch_model.bin + vocab) - its WordPiece tokenizer is used (data.tokenizer
                 'auto'), so multi-host runs need no tokenizer training
  data.files     text / jsonl / parquet files, globs or directories; every host reads the same
                 files and keeps only the rows of its own devices

Batch: 256 sequences x 128 tokens = 32,768 tokens a step, 16 sequences per v4 chip with the
default mesh (data parallel over all chips, parameters replicated). `kdjax compile` for a
v4-32 (docs/scale.md): 0.83 GiB of a chip's 32 GiB, 3 all-reduces a step, compute-bound at
the same roofline step under every mesh; fsdp would add 4,266 collectives a step for 0.05 GiB
a chip, so it does not pay here. Change the mesh with `--config.mesh.preset=...` (see
kdjax/presets.py).
"""

import ml_collections

from kdjax.config_lib import data_config, load_config, mesh_config, train_config


def get_config() -> ml_collections.ConfigDict:
    teacher = load_config("kr_electra_base").model
    teacher.max_position_embeddings = 512
    student = load_config("lf_v3").model
    return ml_collections.ConfigDict({
        "name": "kr_electra_lf_v3",
        # dtype: the teacher's activations in bfloat16 on TPU (weights stay fp32)
        "teacher": {"path": "teachers/kr-electra-base", "init": "", "dtype": "bfloat16",
                    "model": teacher},
        "student": {"model": student, "init": "random"},
        "objective": load_config("objectives/paper_kd"),
        "data": data_config(files="corpus", max_length=128, tokenizer="auto"),
        "train": train_config(steps=200_000, batch_size=256, log_every=100, save_every=2000,
                              keep=3, lr=5e-4, warmup_steps=0.05, schedule="linear"),
        "mesh": mesh_config(shape=(-1, 1, 1), rules="replicated"),
    })
