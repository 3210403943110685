"""Answering one query: the router (view or lake), the `Workbench` serving state and the Arrow fast
path over views. Must not run batches or checks.
"""
