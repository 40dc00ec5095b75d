"""Experiment runner and stack launcher."""
