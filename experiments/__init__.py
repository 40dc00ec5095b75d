"""Experiment YAML files (quickstart, paper, gpu)."""
