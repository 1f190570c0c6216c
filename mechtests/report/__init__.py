"""Reports: the claim matrix (terminal, JSON, Markdown, HTML), plots and baselines.

The report reads only recorded results (JSON-able dicts from
:mod:`mechtests.measures.runner`); it never loads a model.
"""
