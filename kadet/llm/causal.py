"""Small causal LMs on CPU or GPU: loading (packaged SmolLM2 GGUF, a .gguf, a folder) and the
decoding controls the local query generator uses.

Used by ``kadet.stages.generate`` (the ``local`` backend) and ``kadet.stages.label.teachers`` (the ``ql`` teacher).
The three logits processors keep a 135M model on its passage: a bonus for the passage's own
tokens (``PassageBias``), no repeated n-gram in the output (``NoRepeatInOutput``), no copy of
``n`` passage tokens in a row (``NoLongCopy``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import LogitsProcessor, StoppingCriteria

from kadet.core.errors import KadetError

log = logging.getLogger(__name__)


def load_causal_lm(name: str, cache_dir: Path, device: str):
    """Load a causal LM folder, a ``.gguf`` file, or ``smollm2`` (packaged GGUF).

    A GGUF is dequantised by transformers once and saved as safetensors in
    ``<cache_dir>/models/<name>-<size>`` so later loads take a second, not ~45 s.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kadet.kit.models import PACKAGED_LLMS, smollm2_gguf

    path = smollm2_gguf() if name in PACKAGED_LLMS else Path(name)
    if not path.exists():
        raise KadetError(f"generate.model {name!r}: no such file or folder; kadet never downloads models")
    if path.suffix == ".gguf":
        cached = Path(cache_dir) / "models" / f"{path.stem}-{path.stat().st_size}"
        if not (cached / "config.json").exists():
            log.info("dequantising %s (one time)", path.name)
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            # unique per pod: label shards on a cluster share this folder (the model-cache volume)
            # and their processes may all have the same pid
            import shutil
            import socket

            tmp = cached.with_name(cached.name + f".tmp-{socket.gethostname()}-{os.getpid()}")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                os.replace(tmp, cached)
            except OSError:  # another pod finished first: its copy is the same model
                shutil.rmtree(tmp, ignore_errors=True)
        path = cached
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    return model, tok


class StopAtNewline(StoppingCriteria):
    """Stop a row once its last token contains a newline (one query per line)."""

    def __init__(self, newline_ids: torch.Tensor):
        self.newline_ids = newline_ids

    def __call__(self, input_ids, scores, **kwargs):
        return torch.isin(input_ids[:, -1], self.newline_ids)


class PassageBias(LogitsProcessor):
    """Add ``bias`` to the logits of tokens that occur in each row's passage (and of newline
    tokens, so ending the line does not become relatively less likely)."""

    def __init__(self, tok, passages: list[str], bias: float, newline_ids: torch.Tensor, device):
        vocab = len(tok)
        self.bias = torch.zeros((len(passages), vocab), device=device)
        for r, p in enumerate(passages):
            ids = torch.tensor(sorted(set(tok.encode(" " + p, add_special_tokens=False))), device=device)
            self.bias[r, ids[ids < vocab]] = bias
        self.bias[:, newline_ids[newline_ids < vocab]] = bias

    def __call__(self, input_ids, scores):
        return scores + self.bias[:, : scores.shape[1]]


class NoRepeatInOutput(LogitsProcessor):
    """Forbid repeating an n-gram of the *generated* text (the prompt may be quoted)."""

    def __init__(self, n: int, prompt_len: int):
        self.n, self.start = n, prompt_len

    def __call__(self, input_ids, scores):
        for r, seq in enumerate(input_ids[:, self.start :].tolist()):
            if len(seq) < self.n:
                continue
            prefix = tuple(seq[len(seq) - self.n + 1 :])
            banned = [seq[i + self.n - 1] for i in range(len(seq) - self.n + 1)
                      if tuple(seq[i : i + self.n - 1]) == prefix]
            if banned:
                scores[r, banned] = -float("inf")
        return scores


class NoLongCopy(LogitsProcessor):
    """Forbid the token that would make the output copy ``n`` passage tokens in a row."""

    def __init__(self, tok, n: int, passages: list[str], prompt_len: int):
        self.n, self.start = n, prompt_len
        self.next: list[dict[tuple, set[int]]] = []
        for p in passages:
            ids = tok.encode(" " + p, add_special_tokens=False)
            table: dict[tuple, set[int]] = {}
            for i in range(len(ids) - n + 1):
                table.setdefault(tuple(ids[i : i + n - 1]), set()).add(ids[i + n - 1])
            self.next.append(table)

    def __call__(self, input_ids, scores):
        for r, seq in enumerate(input_ids[:, self.start :].tolist()):
            if len(seq) >= self.n - 1:
                banned = self.next[r].get(tuple(seq[len(seq) - self.n + 1 :]))
                if banned:
                    scores[r, list(banned)] = -float("inf")
        return scores
