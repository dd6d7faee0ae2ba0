"""Evaluation: routing statistics, the overfit demo checks, sweep reports and figures."""
