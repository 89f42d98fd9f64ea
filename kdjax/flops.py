"""Analytic matmul FLOPs of the training steps (what `kdjax compile` sets beside XLA's count,
and `bench/distill_step.py` divides throughput by).

Matmul FLOPs only, 2 per multiply-add; L = sequence length; per token unless named otherwise:

  proj(a, b, r)   = 2ab (dense) or 2r(a + b) (low-rank, rank r)
  layer(H, I, A)  = 4 proj(H, H, r_att) + proj(H, I, r_ffn) + proj(I, H, r_ffn) + 4LH
                    (4LH: the Q.K^T score and P.V context matmuls over all heads)
  encoder         = [2 r_emb E]  + [2EH if E != H]  + N layer  + [2H^2 + 2H if logits used]
                    (low-rank word embedding)  (embeddings_project)        (discriminator head)

A trained model costs 3 forwards (forward + backward ~ 3 forwards); a frozen teacher one.

  distill    teacher + 3 x student + losses: 3 x 2 H_s H_t per hidden pair (learned
             projection), relation grams 2 L D per relation (teacher 1x, student 3x); each
             encoder only as deep as the objective reads it (`read_depth`: MiniLM's
             last-layer attention leaves the last feed-forward block unused)
  pretrain   3 x (generator + discriminator with its head) + the generator's MLM head on the
             P = max_predictions(L) masked slots of a row: 3 x P/L x (2 H_g E + 2 E V)
  finetune   3 x the model (task heads are negligible); task KD adds the teacher's forward
"""

from __future__ import annotations

from typing import Any

from kdjax.data.masking import max_predictions


def _proj(a: int, b: int, r: int) -> int:
    return 2 * r * (a + b) if r else 2 * a * b


def encoder_flops(cfg: Any, length: int, logits: bool,
                  read: tuple[int, frozenset[str]] | None = None) -> int:
    """Forward matmul FLOPs per token of one encoder (an `EncoderConfig`; see the module doc).

    `read` = (full layers, parts of the next layer): the encoder only up to what an objective
    reads (`read_depth`); XLA removes the rest as dead code. None: every layer."""
    h, i, e = cfg.hidden_size, cfg.intermediate_size, cfg.emb_size
    emb = (2 * cfg.embedding_rank * e if cfg.embedding_rank else 0) + (2 * e * h if e != h else 0)
    layer = (4 * _proj(h, h, cfg.attention_rank) + _proj(h, i, cfg.ffn_rank)
             + _proj(i, h, cfg.ffn_rank) + 4 * length * h)
    head = 2 * h * h + 2 * h if logits and cfg.head == "discriminator" else 0
    if read is None or logits:
        return emb + cfg.num_layers * layer + head
    full, parts = read
    partial = 0
    if full < cfg.num_layers:
        partial = sum(_proj(h, h, cfg.attention_rank) for p in ("q", "k", "v") if p in parts)
        partial += 2 * length * h if "scores" in parts else 0
    return emb + min(full, cfg.num_layers) * layer + partial


# what a per-layer feature at layer index j (0 = the embeddings) needs of the encoder
_PARTS = {"attention": {"q", "k", "scores"}, "attention_scores": {"q", "k", "scores"},
          "q": {"q"}, "k": {"k"}, "v": {"v"}}


def read_depth(objective: Any, who: str) -> tuple[int, frozenset[str]] | None:
    """How much of the 'student' or 'teacher' encoder `objective` reads: (layers computed in
    full, parts of the next one: q / k / v projections, attention scores), or None for all of
    it (logits). A hidden-state term at index j needs j layers; an attention-type term at
    layer j needs j - 1 layers and that layer's projections (MiniLM's last-layer attention and
    values leave the teacher's and student's last feed-forward block unused)."""
    if objective.model_kwargs(who)["compute_logits"]:
        return None
    full, parts = 0, set()
    for term in objective.terms:
        if term.feature == "labels":
            continue
        for pair in term.pairs or ((0, 0),):
            j = pair[0] if who == "student" else pair[1]
            if term.feature in _PARTS:
                need_full, need = j - 1, _PARTS[term.feature]
            else:  # hidden, embeddings
                need_full, need = j, set()
            if need_full > full:
                full, parts = need_full, set(need)
            elif need_full == full:
                parts |= need
    return full, frozenset(parts)


def step_flops(objective: Any, t_cfg: Any, s_cfg: Any, length: int) -> dict[str, int]:
    """Analytic FLOPs per token of the distillation step, by part."""
    t_logits = objective.model_kwargs("teacher")["compute_logits"]
    s_logits = objective.model_kwargs("student")["compute_logits"]
    loss = 0
    for term in objective.terms:
        if term.projection:
            loss += 3 * len(term.pairs) * 2 * s_cfg.hidden_size * t_cfg.hidden_size
        if term.loss in ("qkv_relation_kl", "value_relation_kl"):
            loss += len(term.pairs) * 2 * length * (t_cfg.hidden_size + 3 * s_cfg.hidden_size)
    teacher = encoder_flops(t_cfg, length, t_logits, read_depth(objective, "teacher"))
    student = 3 * encoder_flops(s_cfg, length, s_logits, read_depth(objective, "student"))
    return {"teacher": teacher, "student_x3": student, "losses": loss,
            "total": teacher + student + loss}


def pretrain_flops(disc: Any, gen: Any, length: int, mlm_probability: float) -> dict[str, int]:
    """Analytic FLOPs per token of the ELECTRA pre-training step, by part."""
    slots = max_predictions(length, mlm_probability) / length
    e = gen.emb_size
    mlm_head = 3 * slots * (2 * gen.hidden_size * e + 2 * e * gen.vocab_size)
    generator = 3 * encoder_flops(gen, length, False) + int(round(mlm_head))
    discriminator = 3 * encoder_flops(disc, length, True)
    return {"generator_x3": generator, "discriminator_x3": discriminator,
            "total": generator + discriminator}


def workload_flops(workload: Any, length: int) -> dict[str, int]:
    """Analytic FLOPs per token of one training step of any `kdjax.train.workloads` workload."""
    kind = workload.kind
    if kind == "distill":
        return step_flops(workload.objective, workload.teacher_cfg, workload.student_cfg, length)
    if kind == "pretrain":
        prob = workload.masking.prob
        return pretrain_flops(workload.disc_cfg, workload.gen_cfg, length, prob)
    if kind == "finetune":
        model = 3 * encoder_flops(workload.model_cfg, length, False)
        return {"model_x3": model, "total": model}
    if kind == "task_distill":
        teacher = encoder_flops(workload.teacher_cfg, length, False)
        student = 3 * encoder_flops(workload.student_cfg, length, False)
        return {"teacher": teacher, "student_x3": student, "total": teacher + student}
    raise ValueError(f"no FLOPs model for workload kind {kind!r}")
