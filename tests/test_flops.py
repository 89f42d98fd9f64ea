"""kdjax.flops: the analytic FLOPs count only what an objective reads of each encoder."""

from pathlib import Path

import pytest

from kdjax.config_lib import load_config
from kdjax.distill.objective import Objective
from kdjax.flops import _proj, encoder_flops, read_depth, step_flops
from kdjax.models.config import EncoderConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _objective(spec: str) -> tuple[Objective, EncoderConfig, EncoderConfig]:
    cfg = load_config(str(CONFIGS / spec))
    s, t = EncoderConfig.from_any(cfg.student.model), EncoderConfig.from_any(cfg.teacher.model)
    return Objective(cfg.objective, s, t), s, t


@pytest.mark.parametrize("spec, parts", [
    ("debug_distill.py:minilmv2", {"q", "k", "v"}),  # last-layer Q/K/V relations
    ("distill_paper.py:kominilm_23m,minilm", {"q", "k", "v", "scores"}),  # + attention maps
])
def test_last_layer_objectives_leave_the_last_block_unread(spec, parts):
    """MiniLM-style objectives read the last layer's attention: every layer but the last in
    full, and of the last only what the terms use; its feed-forward block is dead code."""
    obj, s, t = _objective(spec)
    length = 128
    for who, c in (("teacher", t), ("student", s)):
        assert read_depth(obj, who) == (c.num_layers - 1, frozenset(parts))

    def unread(c: EncoderConfig) -> int:  # the last layer minus what was read
        h, i, r = c.hidden_size, c.intermediate_size, c.attention_rank
        read = sum(_proj(h, h, r) for p in ("q", "k", "v") if p in parts)
        read += 2 * length * h if "scores" in parts else 0
        layer = (4 * _proj(h, h, r) + _proj(h, i, c.ffn_rank) + _proj(i, h, c.ffn_rank)
                 + 4 * length * h)
        return layer - read

    got = step_flops(obj, t, s, length)
    assert got["teacher"] == encoder_flops(t, length, False) - unread(t)
    assert got["student_x3"] == 3 * (encoder_flops(s, length, False) - unread(s))


def test_logit_objectives_count_the_whole_encoders():
    obj, s, t = _objective("debug_distill.py:paper_kd")  # logits + every hidden state
    assert read_depth(obj, "teacher") is None and read_depth(obj, "student") is None
    got = step_flops(obj, t, s, 64)
    assert got["teacher"] == encoder_flops(t, 64, True)
    assert got["student_x3"] == 3 * encoder_flops(s, 64, True)
