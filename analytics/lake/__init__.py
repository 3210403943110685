"""Raw CSV parts to the remediated Parquet lake: the generator of synthetic parts, the remediation
rules, `prepare`, and the manifest with its `Lake` reader. Must not know about views or serving.
"""
