"""Request planning: every (passage, query type, k) an LLM is asked for, with seeded few-shot choices."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from kadet.core.config import GenerateConfig, KadetConfig
from kadet.kit.data import Document
from kadet.llm.prompts import EXAMPLE_PASSAGES, EXTRACTED_TYPES, QUERY_TYPES, QueryType
from kadet.core.layout import shard_range


@dataclass(frozen=True)
class Request:
    key: str
    doc_id: str
    qtype: str
    k: int
    passage: str
    examples: tuple[int, ...]

    @property
    def query_type(self) -> QueryType:
        return QUERY_TYPES[self.qtype]

    @property
    def prompt_id(self) -> str:
        return self.query_type.prompt_id(list(self.examples))

    def raw_prompt(self) -> str:
        return self.query_type.raw_prompt(self.passage, list(self.examples))

    def chat_messages(self) -> list[dict[str, str]]:
        return self.query_type.chat_messages(self.passage, list(self.examples))

    @property
    def prompt_sha(self) -> str:
        """Digest of the exact prompt (passage text, shots, template): a logged output is reused
        only for the same prompt."""
        return hashlib.sha1(self.raw_prompt().encode()).hexdigest()[:16]


def plan_requests(passages: Sequence[Document], g: GenerateConfig, seed: int) -> list[Request]:
    """Every (passage, type, k) to generate, with seeded few-shot choices; sharded by passage
    range (``shard_range``). The types were checked when the config was loaded."""
    requests = []
    for doc in (passages[i] for i in shard_range(len(passages), g.shard_index, g.num_shards)):
        rng = random.Random(f"{seed}:{doc.doc_id}")
        text = doc.full_text()[: g.max_passage_chars]
        for qtype, weight in g.types.items():
            if qtype in EXTRACTED_TYPES:
                continue  # taken from the passage when the queries are written, no LLM
            # weight = queries per passage: the integer part always, the fraction with that probability
            n = int(math.floor(weight)) + (1 if rng.random() < weight - math.floor(weight) else 0)
            qt = QUERY_TYPES[qtype]
            shots = qt.shots if g.shots is None or qt.shots == 0 else g.shots
            for k in range(n):
                ex = tuple(sorted(rng.sample(range(len(EXAMPLE_PASSAGES)), shots))) if shots else ()
                requests.append(Request(f"{doc.doc_id}|{qtype}|{k}", doc.doc_id, qtype, k, text, ex))
    return requests


def unsharded(cfg: KadetConfig) -> KadetConfig:
    """``cfg`` with the generate settings of all shards at once (``generate.shard_index`` 0 of
    ``num_shards`` 1): what a merge writes and what planning counts."""
    return dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, shard_index=0, num_shards=1))
