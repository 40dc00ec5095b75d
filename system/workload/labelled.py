"""Built-in labelled multi-domain corpus: seeded template prompts whose clustering can be scored."""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from system.workload.base import Prompt, PromptSource, register
from system.workload.domain_spec import Domain
from system.workload.domains_expert import LAW, MEDICINE
from system.workload.domains_language import CHIT_CHAT, CREATIVE_WRITING, SUMMARISATION, TRANSLATION
from system.workload.domains_tech import CODE, MATH

DOMAINS: dict[str, Domain] = {
    d.label: d for d in (CODE, MATH, MEDICINE, LAW, CREATIVE_WRITING, TRANSLATION, SUMMARISATION, CHIT_CHAT)
}

# Openers and closers shared by every domain: real prompts carry this filler, and it gives the domains a
# common vocabulary so TF-IDF cannot separate them on every single word.
PREFIXES = [
    "Quick question.",
    "I'm a student and",
    "For work:",
    "This is for a presentation tomorrow.",
    "Hello, I hope you can help.",
    "I have a question about my project.",
    "Explain simply, please.",
]
SUFFIXES = [
    "Thanks!",
    "Keep it short.",
    "Please be detailed.",
    "Explain your reasoning.",
    "Use simple words.",
    "Thank you in advance.",
    "Give an example if possible.",
]
CONTEXT_P = 0.6
PREFIX_P = 0.25
SUFFIX_P = 0.3
_SPACES = re.compile(r"[ \t]+")


def render(domain: Domain, rng: random.Random) -> str:
    """One prompt of `domain`: a random template with random slot values and optional filler."""
    template = rng.choice(domain.templates)
    values = {name: rng.choice(options) for name, options in domain.slots.items()}
    text = template.format(**values)
    if domain.contexts and rng.random() < CONTEXT_P:
        context = rng.choice(domain.contexts).format(**values)
        text = f"{context} {text}" if rng.random() < 0.5 else f"{text} {context}"
    if rng.random() < PREFIX_P:
        text = f"{rng.choice(PREFIXES)} {text}"
    if rng.random() < SUFFIX_P:
        text = f"{text} {rng.choice(SUFFIXES)}"
    # empty optional slots leave double or trailing spaces behind
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()


@register
class LabelledSource(PromptSource):
    """Balanced mix of the 8 domains (or the `domains` subset), shuffled; label = domain name."""

    kind = "labelled"
    options: ClassVar[dict[str, Any]] = {"domains": None}

    def load(self, n: int, seed: int, **options: Any) -> list[Prompt]:
        names = options["domains"]
        if names is None:
            names = list(DOMAINS)
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
            raise ValueError(f"labelled option 'domains' must be a non-empty list, got {names!r}")
        unknown = [d for d in names if d not in DOMAINS]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; valid domains: {', '.join(DOMAINS)}")
        rng = random.Random(seed)
        prompts = []
        for i in range(n):
            domain = DOMAINS[names[i % len(names)]]
            text = render(domain, rng)
            prompts.append(
                Prompt(text=text, reference_output_tokens=domain.output.draw(rng), label=domain.label)
            )
        rng.shuffle(prompts)
        return prompts
