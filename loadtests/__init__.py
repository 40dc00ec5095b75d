"""Locust scenarios (run by the `locust` command, never imported by system/ or by pytest)."""
