"""Export a trained model to a folder anyone can use without kadet or MLflow.

A kadet model is a sentence-transformers folder: a full model, or a query-side model (a ``Router``
whose ``query`` route is the tuned tower and whose ``document`` route is the untouched base model).
:func:`export_model` writes::

    DIR/query/        plain sentence-transformers folder: encode(queries) == source.encode_query(queries)
    DIR/document/     plain sentence-transformers folder: encode(docs) == source.encode_document(docs)
    DIR/model/        the source folder as is (Router kept): encode_query / encode_document
    DIR/onnx/query/   model.onnx (+ model_int8.onnx), tokenizer files, config.json, README.md
    DIR/onnx/document/  the same for documents (omitted where identical: a full model without task prompts)
    DIR/README.md     which folder for what, with calls that run (tests/unit/tools/test_export.py runs them)
    DIR/export.json   source, mode, base model, fingerprints, ONNX vs torch differences

The ONNX graphs end in the final sentence embedding: the model's own sentence-transformers modules
(transformer, its configured pooling, normalisation, any dense layer) are traced as one module, so
nothing is re-implemented. Usage::

    result = export_model(cfg, "exported", model="work/distill/model")    # or version="champion"
    print(result.summary())
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kadet import __version__
from kadet.core.storage import mask_uri
from kadet.core.config import KadetConfig
from kadet.core.errors import KadetError
from kadet.core.io import read_json, replaceable_folder
from kadet.kit.models import model_fingerprint, resolve_model_path
from kadet.kit.towers import ROUTER_TYPE_SUFFIX, model_mode, route_prompt, save_tower  # noqa: F401 - export's API
from kadet.kit.towers import quiet_router_lengths

log = logging.getLogger(__name__)

#: Texts the ONNX graphs are checked on at export time (short, long past any max_seq_length, accents).
SAMPLE_TEXTS = [
    "what does aspirin do to the risk of a heart attack",
    "vitamin d",
    "Aspirin reduces the risk of heart attack in adults; the effect is smaller in people over seventy.",
    "Kurzschlaf erhöht das Risiko für Übergewicht bei Kindern — café, naïve, 42 °C",
    " ".join(["Coffee consumption is associated with lower rates of chronic liver disease"] * 30),
    "a",
]
#: Input name -> the ``tokenizers.Encoding`` attribute that feeds it.
ENCODING_ATTRS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
#: An int8 copy is kept only if every sample's cosine with the torch embedding is at least this.
INT8_MIN_COSINE = 0.98
EXAMPLE_QUERY = "what does aspirin do to the risk of a heart attack"
EXAMPLE_DOC = "Aspirin reduces the risk of heart attack in adults."


@dataclass
class Source:
    """Where the exported model came from: a folder, or a registry version (then ``model_uri``)."""

    path: Path
    model_uri: str = ""
    name: str = ""
    version: str = ""
    alias: str = ""
    tracking_uri: str = ""      # masked (kadet.core.storage.mask_uri): it is printed and written
    base_model: str = ""

    def __post_init__(self):
        self.tracking_uri = mask_uri(self.tracking_uri)

    def describe(self) -> str:
        if not self.model_uri:
            return str(self.path)
        return f"{self.model_uri}" + (f" (alias {self.alias})" if self.alias else "") + f" from {self.tracking_uri}"


@dataclass
class ExportResult:
    """An exported model: its folder, what it came from and how it was exported."""

    out: Path
    source: Source
    mode: str
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        o = self.out
        lines = [f"kadet export: {self.source.describe()} ({self.mode} model) -> {o}",
                 f"  {o}/query     queries: SentenceTransformer('{o}/query').encode(queries)",
                 f"  {o}/document  documents (index): SentenceTransformer('{o}/document').encode(docs)"
                 + ("  [= the base model; an existing index stays valid]" if self.mode == "query" else
                    "  [= query/; re-index with it]"),
                 f"  {o}/model     both: SentenceTransformer('{o}/model').encode_query(...) / .encode_document(...)"]
        for route, facts in self.info.get("onnx", {}).items():
            int8 = facts.get("int8", {})
            kept = "model_int8.onnx kept" if int8.get("kept") else f"no int8 ({int8.get('reason', 'skipped')})"
            lines.append(f"  {o}/onnx/{route}  model.onnx (max |diff| vs torch {facts['max_abs_diff']:.1e}), {kept}")
        if self.source.model_uri:
            lines.append(f"  serve: MLFLOW_TRACKING_URI={self.source.tracking_uri} mlflow models serve "
                         f"-m models:/{self.source.name}/{self.source.version} "
                         "--env-manager local")
        lines.append(f"  see {o}/README.md for the calls; {o}/export.json for fingerprints and checks")
        return "\n".join(lines)


# --- source ----------------------------------------------------------------------------------

def _registry_source(cfg: KadetConfig, version: str) -> Source:
    """``version`` = a number, an alias (champion, challenger) or ``latest`` of ``register.model_name``."""
    from mlflow.exceptions import MlflowException

    from kadet.registry import tracking
    from kadet.registry.register import alias_version, local_model_dir, model_versions

    uri, name = tracking.tracking_uri(cfg), cfg.register.model_name
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise KadetError(f"export: no MLflow store at {mask_uri(uri)} (no kadet run in work dir {cfg.work_dir}?); "
                         "pass --model PATH, --work-dir or tracking.tracking_uri")
    c = tracking.client(cfg)
    alias = ""
    try:
        if version == "latest":
            versions = model_versions(c, name)
            if not versions:
                raise KadetError(f"export: model {name!r} has no versions in the registry at {mask_uri(uri)}")
            mv = max(versions, key=lambda v: int(v.version))
        elif version.isdigit():
            mv = c.get_model_version(name, version)
        else:
            alias = version
            mv = alias_version(c, name, alias)
            if mv is None:
                raise KadetError(f"export: model {name!r} has no alias {alias!r} in the registry at {mask_uri(uri)}")
    except MlflowException as exc:
        raise KadetError(f"export: model {name!r} version {version} not found in the registry at {mask_uri(uri)} "
                         f"({str(exc).splitlines()[0][:200]})") from None
    model_uri = f"models:/{name}/{mv.version}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        tracking.activate(cfg)  # download_artifacts resolves models:/ through the process-wide registry URI
        path = local_model_dir(model_uri)
    finally:   # leave the process as it was: a later store in the same process must not resolve here
        import mlflow

        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Source(path=path, model_uri=model_uri, name=name, version=str(mv.version),
                  alias=alias, tracking_uri=uri, base_model=(mv.tags or {}).get("kadet.base_model", ""))


def resolve_source(cfg: KadetConfig, model: str | None = None, version: str | None = None) -> Source:
    """``model`` (a sentence-transformers folder) if given, else ``version`` of the registry (default latest)."""
    if model and version:
        raise KadetError("export: pass --model PATH or --version N|champion|challenger|latest, not both")
    if model:
        path = resolve_model_path(model)
        if not (path / "modules.json").exists():
            raise KadetError(f"export: {path} is not a sentence-transformers folder (no modules.json)")
        manifest = path.parent / "manifest.json"   # <work_dir>/distill/model: the distill manifest names the base
        base = ""
        if manifest.exists():
            try:
                base = str(read_json(manifest).get("extra", {}).get("base_model", ""))
            except (ValueError, AttributeError):
                base = ""
        return Source(path=path, base_model=base)
    return _registry_source(cfg, version or "latest")


# --- plain towers ----------------------------------------------------------------------------

def _load(path: Path):
    from sentence_transformers import SentenceTransformer

    quiet_router_lengths()
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


# --- ONNX ------------------------------------------------------------------------------------

def _transformer(st):
    t = st[0]
    if not hasattr(t, "tokenizer"):
        raise KadetError(f"export: ONNX needs a Transformer first module, found {type(t).__name__}; use --no-onnx")
    return t


def _graph_module(st, input_names: list[str]):
    """One torch module: token tensors in, the model's final sentence embedding out."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, modules):
            super().__init__()
            self.stack = torch.nn.ModuleList(modules)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "modality": "text"}
            if "token_type_ids" in input_names:
                features["token_type_ids"] = token_type_ids
            for m in self.stack:
                features = m(features)
            return features["sentence_embedding"]

    return SentenceEmbedding(list(st)).eval()


def _onnx_export(module, args: tuple, input_names: list[str], path: Path) -> str:
    """torch.onnx.export with the dynamo exporter (dynamic batch and sequence); the TorchScript
    exporter if dynamo fails. Returns which one wrote ``path`` (a single file, no external data)."""
    import torch

    dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
    with _quiet():
        try:
            return _dynamo_export(module, args, input_names, path)
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other one, say so
            failure = str(exc).splitlines()[0][:200]
        log.warning("dynamo ONNX export failed (%s); using the TorchScript exporter", failure)
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=["sentence_embedding"],
                          dynamic_axes={**dynamic, "sentence_embedding": {0: "batch"}}, dynamo=False, opset_version=17)
    return "torchscript"


@contextlib.contextmanager
def _quiet():
    """The exporters' progress prints, tracer warnings and torch.onnx log lines: not for the console."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamo_export(module, args: tuple, input_names: list[str], path: Path) -> str:
    import torch

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    program = torch.onnx.export(module, args, input_names=input_names, output_names=["sentence_embedding"],
                                dynamic_shapes={n: {0: batch, 1: seq} for n in input_names},
                                dynamo=True, external_data=False, verbose=False)
    program.save(str(path), external_data=False)
    return "dynamo"


def tokenizer_for(folder: Path, config: dict):
    """The ``tokenizers`` tokenizer of an exported ONNX folder, set up as its config.json says."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=config["max_seq_length"])
    tok.enable_padding(pad_id=config["pad_token_id"], pad_token=config["pad_token"], direction=config["padding_side"])
    return tok


def run_onnx(folder: Path, texts: list[str], file: str = "model.onnx", session=None) -> np.ndarray:
    """Embeddings from an exported ONNX folder with onnxruntime + tokenizers only (no torch)."""
    import onnxruntime as ort

    config = read_json(folder / "config.json")
    tok = tokenizer_for(folder, config)
    sess = session or ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
    enc = tok.encode_batch([config["prompt"] + t for t in texts])
    feed = {name: np.array([getattr(e, attr) for e in enc], dtype=np.int64) for name, attr in config["inputs"].items()}
    return sess.run(["sentence_embedding"], feed)[0]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def export_onnx(tower_dir: Path, out: Path, int8_min_cosine: float = INT8_MIN_COSINE) -> dict:
    """``out/model.onnx`` (+ ``model_int8.onnx`` if it keeps quality), tokenizer files, config.json
    and README.md for the plain sentence-transformers folder ``tower_dir``; returns the checks."""
    import torch

    st = _load(tower_dir)
    st.eval()
    t = _transformer(st)
    tok = t.tokenizer
    if not getattr(tok, "is_fast", True):
        raise KadetError(f"export: {tower_dir} has no fast tokenizer (tokenizer.json); use --no-onnx")
    prompt = st.prompts.get(st.default_prompt_name, "") if st.default_prompt_name else ""
    pooling = next((m.get_config_dict() for m in st if type(m).__name__ == "Pooling"), {})
    if prompt and pooling.get("include_prompt") is False:
        raise KadetError("export: the pooling excludes the prompt tokens (include_prompt=false), which the ONNX "
                         "graph cannot; use --no-onnx")
    example = st.preprocess(SAMPLE_TEXTS[:3])
    input_names = [n for n in ENCODING_ATTRS if n in example]
    if input_names[:2] != ["input_ids", "attention_mask"]:
        raise KadetError(f"export: the tokenizer gives {input_names}, not input_ids + attention_mask; use --no-onnx")
    unknown = [k for k, v in example.items() if torch.is_tensor(v) and k not in ENCODING_ATTRS]
    if unknown:
        raise KadetError(f"export: the model takes inputs {unknown} this exporter does not know; use --no-onnx")
    out.mkdir(parents=True, exist_ok=True)
    module = _graph_module(st, input_names)
    with torch.no_grad():
        exporter = _onnx_export(module, tuple(example[n] for n in input_names), input_names, out / "model.onnx")
    tok.save_pretrained(str(out))
    if not (out / "tokenizer.json").exists():
        raise KadetError(f"export: the tokenizer of {tower_dir} wrote no tokenizer.json; use --no-onnx")
    config = {
        "model": "model.onnx", "model_int8": None, "output": "sentence_embedding",
        "inputs": {n: ENCODING_ATTRS[n] for n in input_names},
        "dimension": int(st.get_embedding_dimension()), "max_seq_length": int(st.max_seq_length),
        "prompt": prompt, "pooling": pooling, "normalized": any(type(m).__name__ == "Normalize" for m in st),
        "pad_token": tok.pad_token, "pad_token_id": int(tok.pad_token_id), "padding_side": tok.padding_side,
        "exporter": exporter, "similarity": st.similarity_fn_name or "cosine",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    reference = st.encode(SAMPLE_TEXTS, convert_to_numpy=True)
    got = run_onnx(out, SAMPLE_TEXTS)
    facts = {"exporter": exporter, "max_abs_diff": float(np.abs(got - reference).max()),
             "samples": len(SAMPLE_TEXTS)}
    facts["int8"] = _quantize(out, reference, int8_min_cosine)
    if facts["int8"]["kept"]:
        config["model_int8"] = "model_int8.onnx"
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "README.md").write_text(_onnx_readme(config, facts))
    return facts


def _quantize(out: Path, reference: np.ndarray, min_cosine: float) -> dict:
    """Dynamic int8 (per-channel weights) copy; dropped if any sample's cosine to torch < ``min_cosine``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = out / "model_int8.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic "consider pre-processing" warning
    try:
        quantize_dynamic(str(out / "model.onnx"), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    got = run_onnx(out, SAMPLE_TEXTS, file="model_int8.onnx")
    cos = float(_cosines(got, reference).min())
    facts = {"max_abs_diff": float(np.abs(got - reference).max()), "min_cosine": cos, "threshold": min_cosine,
             "kept": cos >= min_cosine, "method": "onnxruntime quantize_dynamic, QInt8, per-channel weights"}
    if not facts["kept"]:
        facts["reason"] = f"min cosine to torch {cos:.4f} < {min_cosine}"
        target.unlink()
    return facts


def _onnx_readme(config: dict, facts: dict) -> str:
    inputs = ", ".join(f"`{n}` (int64, [batch, sequence], from the tokenizers Encoding's `.{a}`)"
                       for n, a in config["inputs"].items())
    int8 = facts["int8"]
    int8_line = (f"`model_int8.onnx`: dynamic int8 quantisation (per-channel weights); min cosine to torch "
                 f"{int8['min_cosine']:.4f}, max |diff| {int8['max_abs_diff']:.2e}." if int8["kept"] else
                 f"No int8 copy: {int8['reason']}.")
    return (f"# ONNX sentence encoder\n\n"
            f"`model.onnx` ({config['exporter']} exporter) maps tokens to the final sentence embedding: transformer, "
            f"pooling {json.dumps(config['pooling'])}, {'L2 normalisation' if config['normalized'] else 'no normalisation'}"
            f" are inside the graph.\n\n"
            f"- inputs: {inputs}; dynamic batch and sequence axes\n"
            f"- output: `sentence_embedding`, float32 [batch, {config['dimension']}]\n"
            f"- tokenizer: `tokenizer.json` (the `tokenizers` library); truncate to max_seq_length "
            f"{config['max_seq_length']}, pad with `{config['pad_token']}` (id {config['pad_token_id']}) on the "
            f"{config['padding_side']}; prepend the prompt {json.dumps(config['prompt'])} to every text\n"
            f"- checked at export: max |diff| vs the torch model {facts['max_abs_diff']:.2e} on "
            f"{facts['samples']} sample texts\n- {int8_line}\n\n"
            f"`config.json` holds these settings; ../../README.md has a runnable onnxruntime snippet.\n")


# --- README ----------------------------------------------------------------------------------

def readme(out: Path, source: Source, mode: str, info: dict) -> str:
    """DIR/README.md. Every ```python block runs as written (tests/unit/tools/test_export.py executes them)."""
    o = out.resolve()
    one_onnx = bool(info.get("onnx")) and "document" not in info["onnx"]
    parts = [*_readme_folders(source, mode, info, one_onnx), *_readme_sentence_transformers(o),
             *_readme_frameworks(o)]
    if info.get("onnx"):
        parts += _readme_onnx(o, info["onnx"]["query"], one_onnx)
    if source.model_uri:
        parts += _readme_mlflow(source)
    parts.append("Paths in the snippets are this folder's location at export time; change them if you move it.\n")
    return "\n".join(parts)


def _readme_folders(source: Source, mode: str, info: dict, one_onnx: bool) -> list[str]:
    """The README's head: where the model came from and what each folder is for."""
    same = mode == "full"
    parts = [
        "# Exported embedding model\n",
        f"Exported by kadet {__version__} from `{source.describe()}`; a **{mode}** model"
        + (" (query-side: only the query tower was tuned; documents use the untouched base model "
           f"{'`' + source.base_model + '` ' if source.base_model else ''}so an existing index stays valid)."
           if mode == "query" else " (both towers tuned: re-index your documents with it).") + "\n",
        "| folder | use it for |\n|---|---|",
        f"| `query/` | embedding **queries** (plain sentence-transformers folder) |",
        f"| `document/` | embedding **documents** for the index{' (same weights as query/)' if same else ' (= the base model)'} |",
        "| `model/` | both, one folder: `encode_query` / `encode_document` (the original kadet folder) |",
    ]
    if info.get("onnx"):
        parts.append("| `onnx/query/`" + ("" if one_onnx else ", `onnx/document/`") + " | the same encoders as ONNX for "
                     "onnxruntime, no torch (`model.onnx`, `model_int8.onnx` where int8 kept quality, "
                     "`tokenizer.json`, `config.json`) |")
    parts.append("| `export.json` | source, mode, base model, fingerprints, ONNX-vs-torch differences |\n")
    if one_onnx:
        parts.append("For this full model `onnx/document/` is omitted: it would be identical to `onnx/query/`; "
                     "use `onnx/query/` for documents too.\n")
    if mode == "query":
        parts.append("Queries and documents go through **different** encoders: embed queries with `query/` and "
                     "documents with `document/`. Embedding queries with `document/` silently gives the base "
                     "model's results.\n")
    return parts


def _readme_sentence_transformers(o: Path) -> list[str]:
    """The sentence-transformers snippet: the two plain folders, then the one two-tower folder."""
    return [
        "## sentence-transformers\n",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'query_model = SentenceTransformer("{o}/query")',
        f'doc_model = SentenceTransformer("{o}/document")',
        f'q = query_model.encode(["{EXAMPLE_QUERY}"])',
        f'd = doc_model.encode(["{EXAMPLE_DOC}"])',
        "print(query_model.similarity(q, d))",
        "",
        "# or both encoders in one folder:",
        f'both = SentenceTransformer("{o}/model")',
        f'q2 = both.encode_query(["{EXAMPLE_QUERY}"])',
        f'd2 = both.encode_document(["{EXAMPLE_DOC}"])',
        "```\n",
    ]


def _readme_frameworks(o: Path) -> list[str]:
    """LangChain / LlamaIndex: which folder each side uses, and a LangChain-style class."""
    return [
        "## LangChain / LlamaIndex\n",
        "Point the framework's Hugging Face embeddings class at `query/` for queries and `document/` for "
        "indexing (LangChain `HuggingFaceEmbeddings(model_name=...)`, LlamaIndex "
        "`HuggingFaceEmbedding(model_name=...)`: one instance per folder). Or use this class, which has "
        "LangChain's `Embeddings` methods (`embed_documents`, `embed_query`) and needs only sentence-transformers:\n",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        "",
        "class ExportedEmbeddings:",
        '    """LangChain-style embeddings: documents with document/, queries with query/."""',
        "",
        "    def __init__(self, folder):",
        '        self.query_model = SentenceTransformer(f"{folder}/query")',
        '        self.doc_model = SentenceTransformer(f"{folder}/document")',
        "",
        "    def embed_documents(self, texts):",
        "        return self.doc_model.encode(list(texts)).tolist()",
        "",
        "    def embed_query(self, text):",
        "        return self.query_model.encode([text])[0].tolist()",
        "",
        "",
        f'emb = ExportedEmbeddings("{o}")',
        f'vectors = emb.embed_documents(["{EXAMPLE_DOC}"])',
        f'query_vector = emb.embed_query("{EXAMPLE_QUERY}")',
        "```\n",
    ]


def _readme_onnx(o: Path, q: dict, one_onnx: bool) -> list[str]:
    """The onnxruntime + tokenizers snippet; ``q`` is the query tower's ONNX check (``info["onnx"]["query"]``)."""
    return [
        "## onnxruntime + tokenizers (no torch)\n",
        "The graph's output is the final embedding (pooling and normalisation included); "
        f"max |diff| vs torch at export {q['max_abs_diff']:.1e}"
        + (f"; `model_int8.onnx`: min cosine to torch {q['int8']['min_cosine']:.4f} on the sample texts, "
           "about 2x faster on CPU" if q["int8"]["kept"] else f"; no int8 copy ({q['int8'].get('reason')})")
        + ". For documents use `onnx/" + ("query" if one_onnx else "document") + "/` the same way.\n",
        "```python",
        "import json",
        "",
        "import numpy as np",
        "import onnxruntime as ort",
        "from tokenizers import Tokenizer",
        "",
        f'folder = "{o}/onnx/query"',
        'cfg = json.load(open(f"{folder}/config.json"))',
        'tok = Tokenizer.from_file(f"{folder}/tokenizer.json")',
        'tok.enable_truncation(max_length=cfg["max_seq_length"])',
        'tok.enable_padding(pad_id=cfg["pad_token_id"], pad_token=cfg["pad_token"], direction=cfg["padding_side"])',
        'session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])',
        f'encodings = tok.encode_batch([cfg["prompt"] + t for t in ["{EXAMPLE_QUERY}"]])',
        'feed = {name: np.array([getattr(e, attr) for e in encodings], dtype=np.int64)',
        '        for name, attr in cfg["inputs"].items()}',
        'embeddings = session.run(["sentence_embedding"], feed)[0]   # [batch, dim]',
        "```\n",
    ]


def _readme_mlflow(source: Source) -> list[str]:
    """How to serve the registry version the export came from (only for a registry source)."""
    return [
        "## MLflow serving\n",
        f"The same model is version {source.version} of `{source.name}` in the MLflow registry at "
        f"`{source.tracking_uri}`. Serve it (queries by default; `\"params\": {{\"task\": \"document\"}}` "
        "for documents):\n",
        "```bash",
        f"MLFLOW_TRACKING_URI={source.tracking_uri} mlflow models serve -m models:/{source.name}/{source.version} "
        "--env-manager local -h 127.0.0.1 -p 5001",
        "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' "
        f"-d '{{\"inputs\": [\"{EXAMPLE_QUERY}\"], \"params\": {{\"task\": \"query\"}}}}'",
        "```\n",
    ]


# --- the export ------------------------------------------------------------------------------

def protected_paths(cfg: KadetConfig) -> dict[str, Path]:
    """What a command that replaces a folder must never delete: the current directory, the work dir
    and the local registry (the sqlite file of the tracking URI, when it is one)."""
    from kadet.registry.tracking import tracking_uri

    keep = {"the current directory": Path.cwd(), "the work dir": Path(cfg.work_dir)}
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        keep["the MLflow registry"] = Path(uri.removeprefix("sqlite:///"))
    return keep


def swap_into(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out`` (its sibling): the old ``out`` is moved aside first
    and deleted only once the new one is in place."""
    aside = out.with_name(f".{out.name}.old-{time.time_ns()}")
    if out.exists():
        out.rename(aside)
    try:
        tmp.rename(out)
    except BaseException:
        if aside.exists() and not out.exists():
            aside.rename(out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_model(cfg: KadetConfig, out: str | Path, model: str | None = None, version: str | None = None,
                 onnx: bool = True, force: bool = False, int8_min_cosine: float = INT8_MIN_COSINE) -> ExportResult:
    """Write the export folder ``out`` (built beside it, then renamed into place). ``out`` may not be,
    or hold, the current directory, the work dir or the registry file (:func:`replaceable_folder`)."""
    out = replaceable_folder(out, protected_paths(cfg))
    if out.exists() and any(out.iterdir()) and not force:
        raise KadetError(f"export: {out} exists and is not empty; pass --force to replace it")
    if onnx:
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise KadetError(f"export: ONNX needs {exc.name} (pip install 'kadet[export]'), or pass --no-onnx") from None
    source = resolve_source(cfg, model, version)
    mode = model_mode(source.path)
    started = time.time()
    tmp = out.parent / f".{out.name}.tmp-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        shutil.copytree(source.path, tmp / "model")
        src = _load(tmp / "model")
        save_tower(src, "query", tmp / "query")
        save_tower(src, "document", tmp / "document")
        info: dict = {
            "kadet_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": mode,
            "source": {"path": str(source.path), "model_uri": source.model_uri, "name": source.name,
                       "version": source.version, "alias": source.alias, "tracking_uri": source.tracking_uri},
            "base_model": source.base_model or None,
            "fingerprints": {k: model_fingerprint(tmp / k) for k in ("model", "query", "document")},
        }
        if source.base_model:
            try:
                info["fingerprints"]["base_model"] = model_fingerprint(resolve_model_path(source.base_model))
            except KadetError:
                pass
        check = SAMPLE_TEXTS[:3]
        info["towers_checked"] = {  # the plain folders against the source's own two calls
            "query_max_abs_diff": float(np.abs(_load(tmp / "query").encode(check) - src.encode_query(check)).max()),
            "document_max_abs_diff": float(np.abs(_load(tmp / "document").encode(check)
                                                  - src.encode_document(check)).max())}
        if onnx:
            one = mode == "full" and route_prompt(src, "query") == route_prompt(src, "document")
            routes = ["query"] if one else ["query", "document"]
            info["onnx"] = {r: export_onnx(tmp / r, tmp / "onnx" / r, int8_min_cosine) for r in routes}
            if one:
                info["onnx_document"] = "omitted: identical to onnx/query for a full model"
        info["seconds"] = round(time.time() - started, 1)
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(readme(out, source, mode, info))
        swap_into(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out=out, source=source, mode=mode, info=info)
