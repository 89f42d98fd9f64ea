"""Demo stage 2: distill the demo teacher into an LF-V3-shaped student: ELECTRA-Small-like
proportions (hidden 1/2 of the teacher, embedding 64 + projection) with low-rank FFN,
attention and word embedding, objective `paper_kd`.

`teacher.path` is set by `kdjax demo` to the stage-1 workdir. The same recipe distills
KR-ELECTRA-base -> LF-V3 with teacher.path=<KR-ELECTRA dir> and
student.model=configs/lf_v3.py's model.
"""

import ml_collections

from kdjax.config_lib import data_config, mesh_config, model_config, sibling, train_config


def get_config() -> ml_collections.ConfigDict:
    student = model_config(vocab_size=4000, hidden_size=64, num_layers=4, num_heads=2,
                           intermediate_size=256, embedding_size=64, max_position_embeddings=128,
                           head="discriminator", ffn_rank=16, attention_rank=16,
                           embedding_rank=16)
    return ml_collections.ConfigDict({
        "name": "demo_distill",
        "teacher": {"path": "", "init": "", "dtype": "", "model": model_config()},
        "student": {"model": student, "init": "random"},
        "objective": sibling(__file__, "objectives/paper_kd.py"),
        "data": data_config(files="builtin:konlpy,builtin:sample", max_length=128),
        "train": train_config(steps=300, batch_size=16, log_every=25, save_every=100, lr=2e-3,
                              warmup_steps=30),
        "mesh": mesh_config(),
    })
