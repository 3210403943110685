"""Proof that answers are right: the challenge's baseline, the 23 guardrails and the remediation
report. Must not change the lake or the views.
"""
