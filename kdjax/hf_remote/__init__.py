"""PyTorch code shipped inside kdjax's *factorized* Hugging Face exports.

`kdjax.export_core.to_hf(..., format="factorized")` copies `configuration_kdjax_electra.py` and
`modeling_kdjax_electra.py` next to the weights and points `auto_map` in config.json at them, so
that `AutoModel*.from_pretrained(directory, trust_remote_code=True)` loads the low-rank model
without kdjax installed (only torch and transformers >= 5).

Importing this package needs torch; kdjax itself never imports it (it only copies the files).
"""

from __future__ import annotations

from pathlib import Path

REMOTE_DIR = Path(__file__).resolve().parent
CONFIG_FILE = "configuration_kdjax_electra.py"
MODELING_FILE = "modeling_kdjax_electra.py"
FILES = (CONFIG_FILE, MODELING_FILE)
MODEL_TYPE = "kdjax_electra"

# transformers Auto class -> class in modeling_kdjax_electra.py (written to config.json auto_map).
AUTO_MAP = {
    "AutoConfig": "configuration_kdjax_electra.KdjaxElectraConfig",
    "AutoModel": "modeling_kdjax_electra.KdjaxElectraModel",
    "AutoModelForPreTraining": "modeling_kdjax_electra.KdjaxElectraForPreTraining",
    "AutoModelForMaskedLM": "modeling_kdjax_electra.KdjaxElectraForMaskedLM",
    "AutoModelForSequenceClassification":
        "modeling_kdjax_electra.KdjaxElectraForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_kdjax_electra.KdjaxElectraForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_kdjax_electra.KdjaxElectraForQuestionAnswering",
}

# kdjax head -> the class config.json's `architectures` names.
ARCHITECTURES = {
    "none": "KdjaxElectraModel",
    "discriminator": "KdjaxElectraForPreTraining",
    "generator": "KdjaxElectraForMaskedLM",
    "classification": "KdjaxElectraForSequenceClassification",
    "token_classification": "KdjaxElectraForTokenClassification",
    "qa": "KdjaxElectraForQuestionAnswering",
}

__all__ = ["ARCHITECTURES", "AUTO_MAP", "FILES", "MODEL_TYPE", "REMOTE_DIR"]
