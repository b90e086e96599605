"""Scoring a run against the simulator's truth: the report's figures and plots."""
