"""Prompt sources (ShareGPT, labelled multi-domain corpus, synthetic) shared by the classifier and Locust."""
