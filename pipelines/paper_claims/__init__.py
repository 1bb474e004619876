"""Helpers of ``pipelines/paper_claims.py`` (issue 15): data and stores, the measurement
training loop, the five claims' arms, and the report. Not part of the installed package."""
