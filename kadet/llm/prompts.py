"""Query types, their prompt templates and few-shot examples (written for kadet, not copied).

Each :class:`QueryType` has an instruction, a label for raw prompts, and examples drawn from
the passages in :data:`EXAMPLE_PASSAGES`. A prompt shows ``shots`` examples (3 by default)
chosen with a seeded RNG; ``prompt_id`` records which, e.g. ``question/v1/2.5.7``::

    qt = QUERY_TYPES["claim"]
    prompt = qt.raw_prompt(passage_text, examples=[0, 4, 9])
    messages = qt.chat_messages(passage_text, examples=[0, 4, 9])

``web`` is zero-shot by default (``shots = 0``): the instruction alone, as in the paper.

The names of the query types are listed once, in the config (``LLM_TYPES``, ``EXTRACTED_TYPES``:
kadet/core/config.py); :data:`QUERY_TYPES` has one template per LLM type, checked at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kadet.core.config import ALL_TYPES, EXTRACTED_TYPES, LLM_TYPES  # noqa: F401 - re-exported

PROMPT_VERSION = "v1"

#: Short passages written for kadet's few-shot examples (several domains on purpose).
EXAMPLE_PASSAGES: list[str] = [
    "Children who slept fewer than nine hours a night gained more body fat over two years than "
    "children who slept longer, even after adjusting for diet and physical activity.",
    "The enzyme telomerase adds repeated DNA sequences to chromosome ends, and its activity is "
    "high in most cancer cells but low in most adult somatic tissues.",
    "Replacing a gas boiler with an air-source heat pump cut household heating emissions by about "
    "60 percent in a three-year field trial of 700 homes in northern England.",
    "Patients given a low dose of aspirin after hip surgery had rates of blood clots similar to "
    "those given injected anticoagulants, and reported fewer bleeding problems.",
    "Zebrafish regrow heart muscle after injury because existing heart cells re-enter the cell "
    "cycle and divide, a response that is almost absent in adult mammals.",
    "A cohort study of 12,000 nurses found that rotating night shifts for more than five years "
    "was associated with a higher risk of type 2 diabetes.",
    "Soil bacteria of the genus Streptomyces produce most of the antibiotics used in medicine, "
    "including streptomycin, which was the first effective drug against tuberculosis.",
    "Lithium-iron-phosphate batteries tolerate more charge cycles and higher temperatures than "
    "nickel-rich cells, but they store less energy per kilogram.",
    "Vitamin D supplements did not reduce the number of fractures in healthy older adults who "
    "were not deficient at the start of the five-year trial.",
    "Mutations in the CFTR gene disrupt chloride transport across cell membranes, which thickens "
    "mucus in the lungs and pancreas of people with cystic fibrosis.",
]


@dataclass(frozen=True)
class QueryType:
    name: str
    #: Instruction for chat models and the header of raw prompts.
    instruction: str
    #: The line label in raw prompts ("Passage: ...\\nQuestion: ...").
    label: str
    #: One output per example passage, same order as EXAMPLE_PASSAGES.
    examples: list[str] = field(default_factory=list)
    #: How many examples a prompt shows.
    shots: int = 3

    def example_pairs(self, indices: list[int]) -> list[tuple[str, str]]:
        return [(EXAMPLE_PASSAGES[i], self.examples[i]) for i in indices]

    def prompt_id(self, indices: list[int]) -> str:
        return f"{self.name}/{PROMPT_VERSION}/" + (".".join(str(i) for i in indices) or "zero-shot")

    def raw_prompt(self, passage: str, examples: list[int]) -> str:
        """A plain few-shot prompt for base or small models; the answer ends at a newline."""
        parts = [self.instruction, ""]
        for p, q in self.example_pairs(examples):
            parts += [f"Passage: {p}", f"{self.label}: {q}", ""]
        parts += [f"Passage: {passage}", f"{self.label}:"]
        return "\n".join(parts)

    def chat_messages(self, passage: str, examples: list[int]) -> list[dict[str, str]]:
        """Chat messages for instruct models: examples as earlier user/assistant turns."""
        msgs = [{"role": "system", "content": self.instruction + " Reply with one line only."}]
        for p, q in self.example_pairs(examples):
            msgs += [{"role": "user", "content": f"Passage: {p}"}, {"role": "assistant", "content": q}]
        msgs.append({"role": "user", "content": f"Passage: {passage}"})
        return msgs


QUERY_TYPES: dict[str, QueryType] = {
    qt.name: qt
    for qt in [
        QueryType(
            "question",
            "Write one question that the passage answers.",
            "Question",
            [
                "Does short sleep make children gain body fat?",
                "Why is telomerase activity high in cancer cells?",
                "How much do heat pumps reduce household heating emissions?",
                "Is aspirin as good as injected anticoagulants for preventing clots after hip surgery?",
                "How do zebrafish regenerate heart muscle?",
                "Does night shift work increase the risk of diabetes?",
                "Which bacteria produce most medical antibiotics?",
                "What are the trade-offs of lithium-iron-phosphate batteries?",
                "Do vitamin D supplements prevent fractures in older adults?",
                "How do CFTR mutations cause thick mucus?",
            ],
        ),
        QueryType(
            "claim",
            "Write one short factual claim that the passage supports.",
            "Claim",
            [
                "Insufficient sleep in childhood increases body fat gain.",
                "Most cancer cells have high telomerase activity.",
                "Heat pumps reduce home heating emissions by more than half.",
                "Low-dose aspirin prevents clots after hip surgery as well as anticoagulant injections.",
                "Heart cells of adult zebrafish can divide after injury.",
                "Long-term rotating night shifts are linked to type 2 diabetes.",
                "Streptomycin comes from soil bacteria.",
                "LFP batteries have lower energy density than nickel-rich batteries.",
                "Vitamin D supplementation does not reduce fractures in non-deficient older adults.",
                "CFTR mutations impair chloride transport.",
            ],
        ),
        QueryType(
            "keywords",
            "Write up to five keywords for the passage, separated by commas.",
            "Keywords",
            [
                "child sleep, body fat, obesity",
                "telomerase, telomeres, cancer cells",
                "heat pump, heating emissions, field trial",
                "aspirin, hip surgery, blood clots, anticoagulants",
                "zebrafish, heart regeneration, cardiomyocytes",
                "night shift work, type 2 diabetes, nurses",
                "Streptomyces, antibiotics, streptomycin, tuberculosis",
                "LFP battery, charge cycles, energy density",
                "vitamin D, fractures, older adults, trial",
                "CFTR, cystic fibrosis, chloride transport, mucus",
            ],
        ),
        QueryType(
            "title",
            "Write a short title for the passage.",
            "Title",
            [
                "Short Sleep and Fat Gain in Children",
                "Telomerase Activity in Cancer and Normal Tissue",
                "Emission Savings from Domestic Heat Pumps",
                "Aspirin versus Anticoagulants after Hip Surgery",
                "Heart Regeneration in Zebrafish",
                "Night Shift Work and Diabetes Risk in Nurses",
                "Antibiotics from Soil Streptomyces",
                "Strengths and Limits of LFP Batteries",
                "Vitamin D and Fracture Prevention in Older Adults",
                "How CFTR Mutations Cause Cystic Fibrosis",
            ],
        ),
        QueryType(
            "web",
            "Write a web search query that a person would type to find the passage.",
            "Query",
            [
                "kids sleep less gain fat",
                "telomerase in cancer cells",
                "heat pump co2 savings uk trial",
                "aspirin after hip replacement blood clots",
                "zebrafish heart regeneration",
                "night shift diabetes risk",
                "where do antibiotics come from",
                "lfp vs nmc battery",
                "vitamin d fractures elderly",
                "cftr chloride mucus",
            ],
            shots=0,
        ),
        QueryType(
            "msmarco",
            "Write a short search engine query, in lower case, that the passage answers.",
            "Query",
            [
                "how much sleep do children need to avoid weight gain",
                "what does telomerase do",
                "how much do heat pumps reduce emissions",
                "can aspirin replace blood thinners after surgery",
                "can zebrafish regrow their hearts",
                "does working nights cause diabetes",
                "what bacteria make antibiotics",
                "lithium iron phosphate battery pros and cons",
                "does vitamin d prevent fractures",
                "what causes cystic fibrosis",
            ],
        ),
    ]
}

# The names of the query types are the config's (kadet/core/config.py: the core layer checks
# ``generate.types`` without importing prompts); the templates above are one per LLM type.
if tuple(QUERY_TYPES) != LLM_TYPES:
    raise AssertionError(f"prompts {tuple(QUERY_TYPES)} != config's LLM_TYPES {LLM_TYPES}")
