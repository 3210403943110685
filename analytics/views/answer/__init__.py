"""Answering a query from one view version's Arrow rows, without SQL (the fast path).

Owns `ArrowView` (`fastpath`), the zero-copy access to a version's rows (`rows`), their numpy
re-aggregation (`reaggregate`) and the outputs' arithmetic, order and limit (`finish`). It sits in
the views room because a view proves itself with these answers before it is promoted
(`views.proof`), and the serving workbench answers with the same code afterwards. Must not choose
views, build them or open files.
"""
