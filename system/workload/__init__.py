"""Prompt sources (ShareGPT, labelled multi-domain corpus, synthetic) shared by the classifier and Locust."""

from __future__ import annotations

from system.workload import labelled, sharegpt, synthetic  # noqa: F401  (registers the sources)
from system.workload.base import SOURCES, Prompt, PromptSource, describe_sources, load_prompts, register

__all__ = ["SOURCES", "Prompt", "PromptSource", "describe_sources", "load_prompts", "register"]
