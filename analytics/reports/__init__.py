"""Notebooks executed headlessly into HTML reports, and the helpers the notebooks call.
"""
