"""`kdjax demo`: the whole pipeline, small enough for a laptop CPU (minutes, no network).

1. tokenizer: a WordPiece vocabulary trained on the corpus;
2. teacher: ELECTRA pre-training (generator + discriminator) on real Korean text;
3. student: distillation into an LF-V3-shaped factorized student (objective paper_kd);
4. a summary: sizes, compression, losses, where everything is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kdjax.config_lib import load_config
from kdjax.paths import absolute, corpus_sources


def run_demo(workdir: str, corpus: str = "", steps_scale: float = 1.0,
             progress: bool = True) -> dict[str, Any]:
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
