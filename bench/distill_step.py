"""Side-by-side benchmark of one distillation step: kdjax (jitted, sharded) vs PyTorch eager.

Prints its figures (not a test). Every measurement runs in a fresh subprocess, so peak RSS is
separable per framework and workload and JAX / PyTorch never share a process or thread pool.

    python bench/distill_step.py --quick                 # debug -> tiny only (< 3 min, 2 cores)
    python bench/distill_step.py --scaled-teacher        # CPU: 12 x 384 teacher (see below)
    python bench/distill_step.py                         # full KR-ELECTRA-base teacher (GPU/TPU)

Workloads (sequence length 128, random-init teacher, the built-in Korean sample corpus through a
synthetic vocab.txt of the teacher's vocabulary size, so nothing is downloaded):

  kd_small/paper_kd   teacher-base -> KR-ELECTRA-Small-KD (12 x 256, 4 heads, E=128)
  lf_v3/paper_kd      teacher-base -> LF-V3 (kd_small + low-rank FFN r=56, attention r=64,
                      word embedding r=32)
  kominilm/minilm     teacher-base -> KoMiniLM-23M shape (6 x 384, 12 heads). MiniLM's attention
                      KL and value relation need equal head counts; kd_small / lf_v3 have 4 heads
                      and a width (256) that 12 does not divide, so a 12-head kd_small variant does
                      not exist. The 12-head 384-wide KoMiniLM student is the MiniLM recipe's own
                      student shape, so it is the minilm workload.
  tiny/paper_kd       debug teacher (4 x 64) -> debug factorized student (2 x 32): `--quick`.

`--scaled-teacher` (the default on CPU) replaces the 12 x 768 / FFN 3072 teacher by 12 x 384 /
12 heads / FFN 1536 (about a quarter of the FLOPs). It keeps 12 layers and 12 heads so that the
paper_kd uniform layer map (12 -> 12, teacher layers must be a multiple of student layers) and
the minilm head-count rule are unchanged. `--full-teacher` forces the full size.

FLOPs per token (matmul FLOPs, 2 per multiply-add; L = sequence length; `kdjax.flops`):
  proj(a, b, r)   = 2ab (dense) or 2r(a + b) (low-rank, rank r)
  layer(H, I, A)  = 4 proj(H, H, r_att) + proj(H, I, r_ffn) + proj(I, H, r_ffn) + 4LH
                    (4LH: the Q.K^T score and P.V context matmuls over all heads)
  encoder         = [2 r_emb E]  + [2EH if E != H]  + N layer  + [2H^2 + 2H if logits used]
                    (low-rank word embedding)  (embeddings_project)        (discriminator head)
  step            = teacher encoder + 3 x student encoder (forward + backward ~ 3 forwards)
                    + losses: 3 x 2 H_s H_t per hidden pair (learned projection),
                      relation grams 2 L D per relation (teacher 1x, student 3x)
XLA's own count of the compiled step (`compiled.cost_analysis()["flops"]`) is printed too.

Peak: the best of several jitted `jnp.dot` and `torch.matmul` of large fp32 square matrices,
measured in this run; `peak_gflops` is the larger of the two (the machine's attainable dense
fp32 peak), `peak_fraction` = achieved / peak.

The PyTorch peer (eager, `torch.set_num_threads(cores)`): transformers' ElectraForPreTraining /
ElectraModel teacher (eval, no_grad) and student with the same shapes; low-rank layers are
`nn.Sequential(Linear(in, r, bias=False), Linear(r, out))` and the low-rank word embedding is
`nn.Sequential(Embedding(V, r), Linear(r, E, bias=False))`; the same losses written in torch
(binary KD on the discriminator logits, hidden MSE through a learned Linear projection over the
uniform 13-pair map, MiniLMv2 Q-Q / K-K relation KL on the last layer; MiniLM attention KL +
value relation for minilm, the last layer's probabilities recomputed from hooked Q/K so that
every layer keeps SDPA), AdamW (no decay on biases / LayerNorm), global-norm clip 1.0, the same
batches, dropout 0.1 in both.

Timing: each measurement times `--steps` steps in `--blocks` blocks (the host syncs only at block
ends) and keeps the fastest block. On CPU each main workload is measured `--rounds` times (default
2), kdjax and PyTorch alternating and swapping order every round, because a shared 2-core VM has
slow spells of 10-20% that would otherwise land on one framework only; the best round counts and
every round's figure is printed (`*_rounds_tokens_per_s`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LENGTH = 128
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/workers.py
from workers import Interrupted, cpu_model, minor_faults, peak_rss_mb  # noqa: E402
from workers import spawn as _spawn  # noqa: E402

# name -> (config spec, extra overrides, default batch)
WORKLOADS: dict[str, dict[str, Any]] = {
    "kd_small/paper_kd": {"config": "distill_paper.py:kd_small,paper_kd", "base": True},
    "lf_v3/paper_kd": {"config": "distill_paper.py:lf_v3,paper_kd", "base": True},
    "kominilm/minilm": {"config": "distill_paper.py:kominilm_23m,minilm", "base": True},
    "tiny/paper_kd": {"config": "debug_distill.py:paper_kd", "base": False},
}
QUICK = ("tiny/paper_kd",)
FULL = ("kd_small/paper_kd", "lf_v3/paper_kd", "kominilm/minilm", "tiny/paper_kd")
# The PyTorch peer runs at its own defaults: its worker imports kdjax (data, objective config),
# and kdjax's malloc settings (kdjax/host_heap.py) are kdjax's, not PyTorch's.
TORCH_ENV = {"KDJAX_HOST_HEAP": "off"}
SCALED_TEACHER = {"hidden_size": 384, "num_heads": 12, "intermediate_size": 1536,
                  "embedding_size": 384, "num_layers": 12}


# ---------------------------------------------------------------------------------------------
# shared helpers (no jax / torch imports at module level: workers import what they need)
# ---------------------------------------------------------------------------------------------
def load_avg() -> float:
    with contextlib.suppress(OSError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return float("nan")


def overrides_for(spec: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """Config overrides: random teacher, synthetic vocab, length 128, batch, mesh, levers."""
    out = [
        "teacher.init=random", "teacher.path=",
        f"teacher.dtype={job['teacher_dtype']}",
        "data.files=builtin:sample", f"data.tokenizer={job['tokenizer']}",
        f"data.max_length={LENGTH}", f"train.batch_size={job['batch']}",
        "train.steps=100000", "train.warmup_steps=10", "train.log_every=1000000",
        "train.save_every=1000000",
        f"mesh.num_devices={job['devices']}", f"mesh.shape=({job['devices']}, 1, 1)",
    ]
    if spec["base"] and job["scaled_teacher"]:
        out += [f"teacher.model.{k}={v}" for k, v in SCALED_TEACHER.items()]
    out += list(job.get("overrides", ()))
    return out


def write_vocab(directory: Path, size: int) -> Path:
    """A WordPiece vocab.txt with exactly `size` entries: the special tokens, every character
    of the built-in sample (and its ## continuation), then [unusedN] fillers."""
    from kdjax.data.corpus import SAMPLE
    from kdjax.data.tokenizer import DEFAULT_SPECIAL_TOKENS

    chars = sorted({c for c in SAMPLE.read_text(encoding="utf-8") if not c.isspace()})
    tokens = list(DEFAULT_SPECIAL_TOKENS)
    for c in chars + ["##" + c for c in chars]:
        if len(tokens) < size:
            tokens.append(c)
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return directory


def model_configs(job: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(config, teacher EncoderConfig, student EncoderConfig) as `prepare` resolves them."""
    from kdjax.config_lib import load_config
    from kdjax.models.config import EncoderConfig

    spec = WORKLOADS[job["workload"]]
    config = load_config(spec["config"], overrides_for(spec, job))
    t_cfg = EncoderConfig.from_any(config.teacher.model.to_dict())
    if config.teacher.get("dtype"):
        t_cfg = t_cfg.replace(dtype=config.teacher.dtype, param_dtype=config.teacher.dtype)
    s_cfg = EncoderConfig.from_any(config.student.model.to_dict()).replace(
        vocab_size=t_cfg.vocab_size)
    return config, t_cfg, s_cfg


# ---------------------------------------------------------------------------------------------
# workers (run in a subprocess; print one JSON line prefixed RESULT)
# ---------------------------------------------------------------------------------------------
def _bar(total: int, desc: str, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not show, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def worker_peak(job: dict[str, Any]) -> dict[str, Any]:
    """Best-of-N dense fp32 matmul GFLOP/s with jax (jit) and torch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n, reps = job["n"], job["reps"]
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32)) for _ in range(2))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    jax_gf = 2 * n**3 / best / 1e9
    import torch

    torch.set_num_threads(job["threads"])
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(ta, tb)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(ta, tb)
        best = min(best, time.perf_counter() - t)
    return {"n": n, "jax_gflops": jax_gf, "torch_gflops": 2 * n**3 / best / 1e9}


def timed_blocks(run_step: Any, sync: Any, steps: int, blocks: int, bar: Any) -> dict[str, Any]:
    """Run `steps` steps in `blocks` back-to-back blocks, syncing only at each block's end.

    Returns the mean seconds per step over all steps and over the fastest block (the machine is
    shared: the best block is the least disturbed estimate; both frameworks use this protocol).
    """
    per_block = max(1, steps // blocks)
    times = []
    for b in range(blocks):
        start = time.perf_counter()
        for i in range(per_block):
            out = run_step(b * per_block + i)
            bar.update(1)
        sync(out)
        times.append((time.perf_counter() - start) / per_block)
    return {"step_s_mean": sum(times) / len(times), "step_s_best": min(times),
            "steps": per_block * blocks, "out": out}


def worker_kdjax(job: dict[str, Any]) -> dict[str, Any]:
    """One kdjax measurement per entry of job["sweep"] (the device-count sweep) in this process."""
    results = [_kdjax_one({**job, **point}) for point in job.get("sweep", [{}])]
    return results[0] if len(results) == 1 else {"sweep": results}


def _kdjax_one(job: dict[str, Any]) -> dict[str, Any]:
    import jax
    import numpy as np

    from kdjax import cpu_compiler, host_heap
    from kdjax.data.corpus import local_rows, to_global
    from kdjax.flops import step_flops
    from kdjax.train.pretrain_distill import prepare
    from kdjax.train.trainer import CompiledSteps

    config, t_cfg, s_cfg = model_configs(job)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdjax-bench-") as workdir:
        session, run = prepare(config, workdir, "distill", progress=False)
        task = run.workload
        batch_size = run.global_batch
        with session.context():
            rows = local_rows(session.batch_sharding, batch_size)
            batches = [to_global(session.batches.rows(s, rows), session.batch_sharding,
                                 batch_size) for s in range(4)]
            # the trainer's step runner: on XLA:CPU with large temporaries it waits for each
            # step before the next (kdjax.train.host_memory.sync_each_step), as a run does
            step_runner = CompiledSteps(session.step_fn, session.state, session.frozen, [],
                                        session.batch_sharding, precompile=False)
            t_step = time.perf_counter()
            compiled = step_runner.compiled(batches[0])
            syncs = step_runner.syncs(batches[0])
            compile_s = time.perf_counter() - t0
            compile_step_s = time.perf_counter() - t_step  # trace + lower + XLA compile
            # XLA:CPU compiles each fusion into its own kernel (the step's compile time is
            # roughly proportional to this count; docs/performance.md)
            fusions = compiled.as_text().count(" fusion(")
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list | tuple) else cost
            mem = compiled.memory_analysis()
            carry = {"state": session.state}
            frozen = session.frozen
            warmup, steps, blocks = job["warmup"], job["steps"], job["blocks"]
            bar = _bar(warmup + steps, f"kdjax {job['workload']} b={batch_size} "
                       f"dev={job['devices']}", job["progress"])

            def run_step(i: int) -> Any:
                carry["state"], metrics = step_runner(carry["state"], frozen,
                                                      batches[i % len(batches)])
                return metrics

            first_loss = None
            warmup_faults = []  # minor page faults of each warm-up step (the heap settling)
            for i in range(warmup):
                faults = minor_faults()
                metrics = jax.block_until_ready(run_step(i))
                warmup_faults.append(minor_faults() - faults)
                first_loss = float(metrics["loss"]) if first_loss is None else first_loss
                bar.update(1)
            faults = minor_faults()
            timing = timed_blocks(run_step, jax.block_until_ready, steps, blocks, bar)
            timed_faults = (minor_faults() - faults) / timing["steps"]
            bar.close()
            loss = float(timing.pop("out")["loss"])
    tokens = batch_size * LENGTH
    flops = step_flops(task.objective, t_cfg, s_cfg, LENGTH)
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return {
        "tokens_per_s": tokens / timing["step_s_best"],
        "tokens_per_s_mean": tokens / timing["step_s_mean"], **timing,
        "compile_s": compile_s, "compile_step_s": compile_step_s, "xla_fusions": fusions,
        "first_loss": first_loss, "last_loss": loss,
        "finite": bool(np.isfinite(loss)), "flops_per_token": flops,
        "xla_flops_per_token": xla_flops / tokens,
        "xla_temp_mb": getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem else None,
        "devices": len(session.mesh.devices.flat), "batch": batch_size,
        "teacher": {k: getattr(t_cfg, k) for k in ("num_layers", "hidden_size", "num_heads",
                                                    "intermediate_size", "dtype")},
        "peak_rss_mb": peak_rss_mb(), "host_heap": host_heap.status(),
        "cpu_compiler": cpu_compiler.status(),
        "warmup_faults": warmup_faults, "faults_per_step": round(timed_faults),
        "sync_each_step": syncs,
    }


# -- the PyTorch peer ---------------------------------------------------------------------------
def _torch_model(cfg: Any, with_head: bool) -> Any:
    """transformers Electra with `cfg`'s shape; low-rank parts as nn.Sequential factors."""
    from torch import nn
    from transformers import ElectraConfig, ElectraForPreTraining, ElectraModel

    hf = ElectraConfig(
        vocab_size=cfg.vocab_size, embedding_size=cfg.emb_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, attn_implementation="sdpa",
    )
    model = ElectraForPreTraining(hf) if with_head else ElectraModel(hf)
    core = model.electra if with_head else model

    def low_rank(lin: nn.Linear, r: int) -> nn.Module:
        return nn.Sequential(nn.Linear(lin.in_features, r, bias=False),
                             nn.Linear(r, lin.out_features))

    for layer in core.encoder.layer:
        if cfg.attention_rank:
            att = layer.attention
            for name in ("query", "key", "value"):
                setattr(att.self, name, low_rank(getattr(att.self, name), cfg.attention_rank))
            att.output.dense = low_rank(att.output.dense, cfg.attention_rank)
        if cfg.ffn_rank:
            layer.intermediate.dense = low_rank(layer.intermediate.dense, cfg.ffn_rank)
            layer.output.dense = low_rank(layer.output.dense, cfg.ffn_rank)
    if cfg.embedding_rank:
        core.embeddings.word_embeddings = nn.Sequential(
            nn.Embedding(cfg.vocab_size, cfg.embedding_rank),
            nn.Linear(cfg.embedding_rank, cfg.emb_size, bias=False))
    return model


class _Grab:
    """Forward hooks keeping the last layer's query / key / value projections [B, L, D]."""

    def __init__(self, model: Any, names: tuple[str, ...]):
        core = getattr(model, "electra", model)
        att = core.encoder.layer[-1].attention.self
        self.out: dict[str, Any] = {}
        for name in names:
            getattr(att, name).register_forward_hook(
                lambda _m, _i, o, name=name: self.out.__setitem__(name, o))


def _t_relation_kl(s: Any, t: Any, valid: Any, heads: int) -> Any:
    """MiniLMv2 relation KL: [B, L, D] each side -> A relation heads, softmax(X X^T / sqrt d)."""
    import torch

    def split(x: Any) -> Any:
        b, seq, d = x.shape
        x = x.float() * valid[..., None]
        return x.view(b, seq, heads, d // heads).transpose(1, 2)

    s, t = split(s), split(t)
    s_log = s @ s.transpose(-1, -2) / math.sqrt(s.shape[-1])
    t_log = t @ t.transpose(-1, -2) / math.sqrt(t.shape[-1])
    return _t_row_kl(s_log, t_log, valid, torch)


def _t_row_kl(s_log: Any, t_log: Any, valid: Any, torch: Any) -> Any:
    key = valid[:, None, None, :].bool()
    neg = torch.finfo(torch.float32).min / 2
    log_ps = torch.log_softmax(s_log.masked_fill(~key, neg), -1)
    log_pt = torch.log_softmax(t_log.masked_fill(~key, neg), -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(~key, 0.0).sum(-1)  # [B, A, L]
    rows = valid[:, None, :].expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp(min=1.0)


def _t_probs(q: Any, k: Any, valid: Any, heads: int, torch: Any) -> Any:
    """Pre-dropout attention probabilities of a layer from its hooked Q and K."""
    b, seq, d = q.shape
    q = q.view(b, seq, heads, d // heads).transpose(1, 2)
    k = k.view(b, seq, heads, d // heads).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)
    bias = (1.0 - valid[:, None, None, :]) * torch.finfo(torch.float32).min
    return torch.softmax(scores + bias, -1)


def worker_torch(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812

    from kdjax.data.corpus import StepBatches, resolve_sources, tokenize_corpus
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.distill.objective import build_objective

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    config, t_cfg, s_cfg = model_configs(job)
    objective = build_objective(config.objective, s_cfg, t_cfg)
    losses = {t.loss for t in objective.terms}
    minilm = "attention_kl" in losses
    heads_rel = next((dict(t.options).get("num_relation_heads") for t in objective.terms
                      if t.loss == "qkv_relation_kl"), None)
    hidden_pairs = next((t.pairs for t in objective.terms if t.loss == "hidden_mse"), ())
    t_logits = objective.model_kwargs("teacher")["compute_logits"]

    t_dtype = torch.bfloat16 if t_cfg.dtype == "bfloat16" else torch.float32
    teacher = _torch_model(t_cfg, with_head=t_logits).eval().to(t_dtype)
    student = _torch_model(s_cfg, with_head=t_logits).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    names = ("query", "value") if minilm else ("query", "key")
    t_grab, s_grab = _Grab(teacher, names + (("key",) if minilm else ())), \
        _Grab(student, names + (("key",) if minilm else ()))
    proj = torch.nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size) if hidden_pairs else None
    trainable = list(student.named_parameters())
    if proj is not None:
        trainable += [("proj." + n, p) for n, p in proj.named_parameters()]
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n  # noqa: E731
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in trainable if not no_decay(n)], "weight_decay": 0.01},
         {"params": [p for n, p in trainable if no_decay(n)], "weight_decay": 0.0}],
        lr=5e-4, betas=(0.9, 0.999), eps=1e-6)
    params = [p for _, p in trainable]

    def step(batch: dict[str, Any]) -> float:
        valid = batch["attention_mask"].float()
        kwargs = dict(attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"])
        with torch.no_grad():
            t_out = teacher(batch["input_ids"], output_hidden_states=bool(hidden_pairs),
                            **kwargs)
        t_h = {k: v.float() for k, v in t_grab.out.items()}
        s_out = student(batch["input_ids"], output_hidden_states=bool(hidden_pairs), **kwargs)
        s_h = s_grab.out
        n_valid = valid.sum().clamp(min=1.0)
        loss = torch.zeros(())
        if t_logits:
            s, t = s_out.logits, t_out.logits.float()
            kl = (torch.sigmoid(t) * (F.logsigmoid(t) - F.logsigmoid(s))
                  + torch.sigmoid(-t) * (F.logsigmoid(-t) - F.logsigmoid(-s)))
            loss = loss + (kl * valid).sum() / n_valid
        if hidden_pairs:
            mse = [((proj(s_out.hidden_states[i]) - t_out.hidden_states[j].float()) ** 2)
                   .mean(-1).mul(valid).sum() / n_valid for i, j in hidden_pairs]
            loss = loss + sum(mse) / len(mse)
        if heads_rel:
            for name in ("query", "key"):
                loss = loss + _t_relation_kl(s_h[name], t_h[name], valid, heads_rel)
        if minilm:
            ps = _t_probs(s_h["query"], s_h["key"], valid, s_cfg.num_heads, torch)
            pt = _t_probs(t_h["query"], t_h["key"], valid, t_cfg.num_heads, torch)
            pair = (valid[:, None, :, None] * valid[:, None, None, :]).bool()
            ps, pt = ps.masked_fill(~pair, 1.0), pt.masked_fill(~pair, 1.0)
            at = (pt * (pt.clamp(min=1e-8).log() - ps.clamp(min=1e-8).log())) \
                .masked_fill(~pair, 0.0).sum(-1)
            rows_ = valid[:, None, :].expand_as(at)
            loss = loss + (at * rows_).sum() / rows_.sum()

            def heads_(x: Any, n: int) -> Any:
                b, seq, d = x.shape
                return x.view(b, seq, n, d // n).transpose(1, 2).reshape(b, n, seq, d // n)

            sv, tv = heads_(s_h["value"], s_cfg.num_heads), heads_(t_h["value"], t_cfg.num_heads)
            sv = sv * valid[:, None, :, None]
            tv = tv * valid[:, None, :, None]
            loss = loss + _t_row_kl(sv @ sv.transpose(-1, -2) / math.sqrt(sv.shape[-1]),
                                    tv @ tv.transpose(-1, -2) / math.sqrt(tv.shape[-1]),
                                    valid, torch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())  # the host sync an eager loop does (loss logging)

    tok = load_tokenizer(job["tokenizer"])
    with tempfile.TemporaryDirectory() as cache:
        examples = tokenize_corpus(resolve_sources("builtin:sample"), tok, LENGTH,
                                   cache_dir=cache, show_progress=False)
    batch_size = job["batch"]
    batches = StepBatches(examples, batch_size, 0, tok.pad_token_id)
    rows = np.arange(batch_size)
    data = [{k: torch.from_numpy(v.astype(np.int64)) for k, v in
             batches.rows(s, rows).items()} for s in range(4)]
    warmup, steps, blocks = job["warmup"], job["steps"], job["blocks"]
    bar = _bar(warmup + steps, f"torch {job['workload']} b={batch_size}", job["progress"])
    first = None
    for i in range(warmup):
        value = step(data[i % len(data)])
        first = value if first is None else first
        bar.update(1)
    timing = timed_blocks(lambda i, d=data: step(d[i % len(d)]), lambda _: None, steps,
                          blocks, bar)
    bar.close()
    value = timing.pop("out")
    tokens = batch_size * LENGTH
    return {
        "tokens_per_s": tokens / timing["step_s_best"],
        "tokens_per_s_mean": tokens / timing["step_s_mean"], **timing, "batch": batch_size,
        "first_loss": first, "last_loss": value, "finite": math.isfinite(value),
        "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}


WORKERS = {"peak": worker_peak, "kdjax": worker_kdjax, "torch": worker_torch}


def run_worker(payload: str) -> int:
    job = json.loads(payload)
    try:
        result = WORKERS[job["kind"]](job)
    except KeyboardInterrupt:
        return 130
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def spawn(job: dict[str, Any], env_extra: dict[str, str] | None = None,
          timeout: float = 3600) -> dict[str, Any]:
    """One measurement in a fresh worker interpreter (bench/workers.py)."""
    return _spawn(__file__, job, timeout, env_extra, cwd=REPO)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "torch", "transformers")}


def _ok(result: dict[str, Any] | None) -> bool:
    return bool(result) and "error" not in result


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One framework's measurements of a workload over several rounds, as one result.

    The fastest round's result is kept (best block over all rounds); the mean is the mean of the
    rounds' means, peak RSS the largest, and `rounds_tokens_per_s` lists every round's best.
    """
    good = [r for r in results if _ok(r)]
    if not good:
        return results[-1] if results else None
    best = dict(max(good, key=lambda r: r["tokens_per_s"]))
    best["tokens_per_s_mean"] = sum(r["tokens_per_s_mean"] for r in good) / len(good)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in good)
    for key in ("compile_s", "compile_step_s"):  # later rounds hit the run's compilation
        if key in best:                           # cache: keep the cold one
            best[key] = max(r[key] for r in good)
    best["rounds_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in good]
    return best


def summarize(name: str, k: dict[str, Any], t: dict[str, Any] | None, peak_gf: float,
              job: dict[str, Any]) -> dict[str, Any]:
    """The JSON line of one workload (kdjax `k` vs PyTorch `t`)."""
    row: dict[str, Any] = {"workload": name, "batch": job["batch"], "length": LENGTH,
                           "kdjax_devices": job["devices"], "teacher_dtype": job["teacher_dtype"]}
    if not _ok(k):
        row["kdjax_error"] = k.get("error")
        return row
    fpt = k["flops_per_token"]["total"]
    achieved = fpt * k["tokens_per_s"] / 1e9
    torch_ok = _ok(t)
    rnd = lambda v, n=1: None if v is None else round(v, n)  # noqa: E731
    row.update({
        "kdjax_tokens_per_s": rnd(k["tokens_per_s"]),
        "pytorch_tokens_per_s": rnd(t["tokens_per_s"]) if torch_ok else None,
        "ratio": rnd(k["tokens_per_s"] / t["tokens_per_s"], 3) if torch_ok else None,
        "kdjax_tokens_per_s_mean": rnd(k["tokens_per_s_mean"]),
        "pytorch_tokens_per_s_mean": rnd(t["tokens_per_s_mean"]) if torch_ok else None,
        "flops_per_token": fpt, "flops_parts": k["flops_per_token"],
        "xla_flops_per_token": round(k["xla_flops_per_token"]),
        "achieved_gflops": rnd(achieved, 2), "peak_gflops": rnd(peak_gf, 2),
        "peak_fraction": rnd(achieved / peak_gf, 3),
        "pytorch_achieved_gflops": rnd(fpt * t["tokens_per_s"] / 1e9, 2) if torch_ok else None,
        "pytorch_peak_fraction": rnd(fpt * t["tokens_per_s"] / 1e9 / peak_gf, 3)
        if torch_ok else None,
        "kdjax_rounds_tokens_per_s": k.get("rounds_tokens_per_s"),
        "pytorch_rounds_tokens_per_s": t.get("rounds_tokens_per_s") if torch_ok else None,
        "kdjax_step_s": rnd(k["step_s_best"], 4), "kdjax_compile_s": rnd(k["compile_s"]),
        "kdjax_compile_step_s": rnd(k["compile_step_s"]), "kdjax_xla_fusions": k["xla_fusions"],
        "kdjax_peak_rss_mb": rnd(k["peak_rss_mb"]),
        "pytorch_peak_rss_mb": rnd(t["peak_rss_mb"]) if torch_ok else None,
        "kdjax_xla_temp_mb": rnd(k["xla_temp_mb"] or 0), "kdjax_host_heap": k.get("host_heap"),
        "kdjax_cpu_compiler": k.get("cpu_compiler"),
        "kdjax_warmup_faults": k.get("warmup_faults"),
        "kdjax_faults_per_step": k.get("faults_per_step"),
        "kdjax_sync_each_step": k.get("sync_each_step"),
        "kdjax_loss": [k["first_loss"], k["last_loss"]],
        "pytorch_loss": [t["first_loss"], t["last_loss"]] if torch_ok else None,
        "teacher": k["teacher"],
    })
    if not torch_ok and t is not None:
        row["pytorch_error"] = t.get("error")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = ("workload", "batch", "kdjax tok/s", "torch tok/s", "ratio", "MFLOP/tok",
            "kdjax GFLOP/s", "peak", "kdjax frac", "torch frac", "kdjax RSS MB",
            "torch RSS MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v, f="{:.0f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        if "kdjax_tokens_per_s" not in r:
            lines.append(f"| {r['workload']} | {r['batch']} | error: {r.get('kdjax_error')} |")
            continue
        lines.append("| " + " | ".join([
            r["workload"], str(r["batch"]), fmt(r["kdjax_tokens_per_s"]),
            fmt(r["pytorch_tokens_per_s"]), fmt(r["ratio"], "{:.2f}x"),
            f"{r['flops_per_token'] / 1e6:.1f}", fmt(r["achieved_gflops"], "{:.1f}"),
            fmt(r["peak_gflops"], "{:.0f}"), fmt(r["peak_fraction"], "{:.0%}"),
            fmt(r["pytorch_peak_fraction"], "{:.0%}"), fmt(r["kdjax_peak_rss_mb"]),
            fmt(r["pytorch_peak_rss_mb"]),
        ]) + " |")
    return "\n".join(lines)


def scaling_lines(scaling: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in scaling:
        if r["kind"] == "batch_scaling":
            what = f"batch {r['batch']:>3}"
        else:
            what = f"{r['devices']} simulated device(s), batch {r['batch']}"
        kd, pt = r.get("kdjax_tokens_per_s"), r.get("pytorch_tokens_per_s")
        parts = [f"kdjax {kd:.0f} tok/s" if kd else f"kdjax error ({r.get('error')})"]
        if pt:
            parts.append(f"torch {pt:.0f} tok/s ({kd / pt:.2f}x)" if kd else f"torch {pt:.0f}")
        if r.get("first_loss") is not None:
            parts.append(f"first loss {r['first_loss']:.6f}")
        out.append(f"  {r['workload']} {what}: " + ", ".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true",
                   help="only the small workload tiny/paper_kd (< 3 min on 2 cores)")
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=None)
    p.add_argument("--scaled-teacher", dest="scaled", action="store_true", default=None,
                   help="12 x 384 teacher (the default on CPU)")
    p.add_argument("--full-teacher", dest="scaled", action="store_false",
                   help="the full 12 x 768 teacher (the default on GPU/TPU)")
    p.add_argument("--batch", type=int, default=None, help="default 16 (CPU) / 64 (GPU/TPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--blocks", type=int, default=2,
                   help="timed steps run in this many blocks; the fastest block is reported")
    p.add_argument("--rounds", type=int, default=None,
                   help="measure each main workload this many times, kdjax and PyTorch "
                        "alternating (their order swapped every round) so that a slow spell "
                        "of a shared machine does not fall on one framework only; the best "
                        "round is reported (default 2 on CPU, 1 with --quick or on GPU/TPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps after compiling (default 2, --quick 1)")
    p.add_argument("--teacher-dtype", default="auto",
                   help="auto (float32 on CPU, bfloat16 elsewhere), float32 or bfloat16")
    p.add_argument("--kdjax-devices", type=int, default=1,
                   help="data-parallel devices for the kdjax workloads; on CPU > 1 simulates "
                        "host devices (--xla_force_host_platform_device_count)")
    p.add_argument("--batch-scaling", type=int, nargs="*", default=None,
                   help="batch sizes for the scaling sweep (default 8 16 32, --quick 8 16; "
                        "none: skip)")
    p.add_argument("--device-scaling", type=int, nargs="*", default=None,
                   help="simulated device counts (default 1 2 4 8, --quick 1 8; none: skip)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads for the peer (default: the core count)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--override", action="append", default=[],
                   help="extra kdjax config override for every kdjax job (a lever to measure), "
                        "e.g. --override teacher.model.attention_impl=einsum")
    p.add_argument("--xla-flags", default=None,
                   help="XLA_FLAGS for the kdjax workers (default: inherited)")
    p.add_argument("--json-out", default=None, help="also write the JSON lines to this file")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args.worker)

    # kdjax first: on a host without an accelerator it picks the CPU before JAX probes for one
    # (no libtpu output), and the workers inherit that choice (kdjax/host_platform.py)
    import jax  # the driver only asks which backend the workers will get

    import kdjax  # noqa: F401
    from kdjax.train.host_memory import thp_mode

    backend = jax.default_backend()
    cpu = backend == "cpu"
    cores = os.cpu_count() or 1
    scaled = cpu if args.scaled is None else args.scaled
    t_dtype = args.teacher_dtype if args.teacher_dtype != "auto" else (
        "float32" if cpu else "bfloat16")
    batch = args.batch or (16 if cpu else 64)
    names = args.workloads or (list(QUICK) if args.quick else list(FULL))
    steps = args.steps or (4 if args.quick else 6)
    rounds = args.rounds or (2 if cpu and not args.quick else 1)
    b_scaling = args.batch_scaling if args.batch_scaling is not None else (
        [8, 16] if args.quick else [8, 16, 32])
    d_scaling = args.device_scaling if args.device_scaling is not None else (
        [1, 8] if args.quick else [1, 2, 4, 8])
    scale_wl = "tiny/paper_kd" if args.quick else names[0]
    show = not args.no_progress and sys.stderr.isatty()
    base_flags = args.xla_flags if args.xla_flags is not None else os.environ.get(
        "XLA_FLAGS", "")

    def kdjax_env(devices: int) -> dict[str, str]:
        flags = base_flags
        if cpu and devices > 1:
            flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        return {"XLA_FLAGS": flags}

    info = {"kind": "machine", "cpu": cpu_model(), "cores": cores, "backend": backend,
            "device_kind": str(jax.devices()[0].device_kind), "versions": versions(),
            "python": platform.python_version(), "load_avg_start": load_avg(),
            "transparent_hugepages": thp_mode(),
            "scaled_teacher": scaled, "teacher_dtype": t_dtype, "batch": batch,
            "steps": steps, "blocks": args.blocks, "rounds": rounds,
            "kdjax_devices": args.kdjax_devices,
            "xla_flags": base_flags, "overrides": args.override,
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    out_lines: list[str] = []

    def emit(obj: dict[str, Any]) -> None:
        line = json.dumps(obj)
        out_lines.append(line)
        print(line, flush=True)

    emit(info)
    tmp = tempfile.TemporaryDirectory(prefix="kdjax-bench-")
    # One compilation cache for this run: identical programs (state / teacher init) compile
    # once across the worker processes. Timings are of the executables, unaffected.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tmp.name) / "jax-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    rows: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    peaks: list[dict[str, Any]] = []
    interrupted = False
    vocab_dirs: dict[int, str] = {}

    def job_for(name: str, b: int, devices: int = 1) -> dict[str, Any]:
        from kdjax.config_lib import load_config

        size = int(load_config(WORKLOADS[name]["config"]).teacher.model.vocab_size)
        if size not in vocab_dirs:
            vocab_dirs[size] = str(write_vocab(Path(tmp.name) / f"vocab{size}", size))
        # CPU: XLA:CPU's temporaries settle into the host heap over the first steps (kd_small at
        # batch 32, 2 GB of them: 520k page faults in each of its first four steps, then none,
        # 2026-12-01); the timed blocks measure the settled step, and each row's
        # kdjax_warmup_faults shows the settling
        warmup = args.warmup if args.warmup is not None else (
            1 if args.quick else 4 if backend == "cpu" else 2)
        return {"workload": name, "batch": b, "devices": devices, "scaled_teacher": scaled,
                "teacher_dtype": t_dtype, "tokenizer": vocab_dirs[size], "warmup": warmup,
                "steps": steps, "blocks": args.blocks, "progress": show,
                "threads": args.torch_threads or cores,
                "overrides": args.override}

    def peak() -> float:
        vals = [max(x.get("jax_gflops", 0.0), x.get("torch_gflops", 0.0)) for x in peaks]
        return max(vals) if vals else float("nan")

    main_results: dict[str, tuple[dict, dict | None]] = {}
    try:
        n, reps = (2048, 3) if args.quick else (4096, 5)
        peaks.append(spawn({"kind": "peak", "n": n, "reps": reps, "threads": cores},
                           kdjax_env(1)))
        emit({"kind": "peak", "when": "start", **peaks[-1]})
        for name in tqdm_iter(names, "workloads", show):
            job = job_for(name, batch, args.kdjax_devices)
            ks: list[dict[str, Any]] = []
            ts: list[dict[str, Any]] = []
            for r in range(rounds):
                order = ("kdjax", "torch") if r % 2 == 0 else ("torch", "kdjax")
                for kind in order:
                    if kind == "kdjax":
                        ks.append(spawn({**job, "kind": "kdjax"}, kdjax_env(args.kdjax_devices)))
                    elif not args.no_torch:
                        ts.append(spawn({**job, "kind": "torch"}, TORCH_ENV))
            main_results[name] = (merge_rounds(ks), None if args.no_torch else merge_rounds(ts))
        peaks.append(spawn({"kind": "peak", "n": n, "reps": reps, "threads": cores},
                           kdjax_env(1)))
        emit({"kind": "peak", "when": "end", **peaks[-1]})
        for name, (k, t) in main_results.items():
            row = summarize(name, k, t, peak(), job_for(name, batch, args.kdjax_devices))
            row["load_avg"] = load_avg()
            rows.append(row)
            emit(row)
        # Batch scaling: each batch size in its own process per framework, kdjax and PyTorch
        # alternating, as a run has one batch size (in one process the later, larger batches
        # ran on the heap the earlier ones left: 2026-12-01, batch 32 at 702 tok/s in the
        # sweep vs 749 alone). The main run's batch is reused when it is the same workload
        # and device count.
        reuse = main_results.get(scale_wl) if args.kdjax_devices == 1 else None
        todo = [b for b in b_scaling if not (reuse and b == batch)]
        if b_scaling:
            got = {}
            for b in todo:
                job = job_for(scale_wl, b)
                kk = spawn({**job, "kind": "kdjax"}, kdjax_env(1))
                tt = None if args.no_torch else spawn({**job, "kind": "torch"}, TORCH_ENV)
                got[b] = (kk, tt)
            if reuse:
                got[batch] = reuse
            for b in b_scaling:
                kk, tt = got.get(b, ({"error": "missing"}, None))
                row = {"kind": "batch_scaling", "workload": scale_wl, "batch": b,
                       "kdjax_tokens_per_s": kk.get("tokens_per_s"),
                       "pytorch_tokens_per_s": (tt or {}).get("tokens_per_s"),
                       "error": kk.get("error"), "load_avg": load_avg()}
                scaling.append(row)
                emit(row)
        if d_scaling:
            todo = [d for d in d_scaling if not (reuse and d == 1)]
            job = {**job_for(scale_wl, batch), "sweep": [{"devices": d} for d in todo]}
            ks = _sweep(spawn({**job, "kind": "kdjax"}, kdjax_env(max(todo)))) if todo else []
            got_d = dict(zip(todo, ks))
            if reuse:
                got_d[1] = reuse[0]
            for d in d_scaling:
                kk = got_d.get(d, {"error": "missing"})
                row = {"kind": "device_scaling", "workload": scale_wl, "batch": batch,
                       "devices": d, "kdjax_tokens_per_s": kk.get("tokens_per_s"),
                       "first_loss": kk.get("first_loss"), "error": kk.get("error"),
                       "load_avg": load_avg()}
                scaling.append(row)
                emit(row)
    except Interrupted:
        interrupted = True
        print("\ninterrupted: partial results below", file=sys.stderr)
    finally:
        tmp.cleanup()
    if not rows and main_results:  # interrupted before the summary: show what finished
        rows = [summarize(n_, k, t, peak(), job_for(n_, batch, args.kdjax_devices))
                for n_, (k, t) in main_results.items()]
    print()
    print(table(rows))
    if scaling:
        print("\nscaling (simulated CPU devices share the same cores: a correctness / overhead "
              "check; the first loss must agree across device counts)")
        print("\n".join(scaling_lines(scaling)))
    measured = ", ".join(f"jax {x.get('jax_gflops', 0):.0f} / torch {x.get('torch_gflops', 0):.0f}"
                         for x in peaks)
    print(f"\npeak dense fp32 matmul: {peak():.1f} GFLOP/s ({measured}); load average "
          f"{info['load_avg_start']:.2f} at the start, {load_avg():.2f} at the end; "
          f"transparent huge pages: {info['transparent_hugepages'] or 'unknown'}")
    heaps = {r.get("kdjax_host_heap") for r in rows}
    if cpu:
        print(f"kdjax host heap (kdjax.host_heap): {', '.join(sorted(map(str, heaps)))}; "
              f"XLA:CPU (kdjax.cpu_compiler): "
              f"{', '.join(sorted({str(r.get('kdjax_cpu_compiler')) for r in rows}))}")
    if cpu and info["transparent_hugepages"] in ("madvise", "never") and heaps != {"on"}:
        print("note: the kdjax host heap is not retained and transparent huge pages are not "
              "'always': XLA:CPU faults its per-step temp buffer in 4 KiB pages "
              "(docs/performance.md, 'CPU: the per-step buffer')")
    if args.json_out:
        Path(args.json_out).write_text("\n".join(out_lines) + "\n")
    return 130 if interrupted else 0


def _sweep(result: dict[str, Any]) -> list[dict[str, Any]]:
    if "sweep" in result:
        return result["sweep"]
    return [result]


def tqdm_iter(items: list[str], desc: str, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not show, file=sys.stderr, leave=False)


if __name__ == "__main__":
    sys.exit(main())
