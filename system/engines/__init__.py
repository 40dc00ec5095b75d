"""Engines behind the OpenAI HTTP API: the `sim` simulator and launchers for vllm / transformers."""
