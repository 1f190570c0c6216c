"""Known-answer mutants: prove, claim by claim, that a verdict means what it says.

``mutants`` builds models whose relation to the base is known by construction (weight surgery
in ``surgery``), ``expected.yaml`` says what every claim must give on each, ``run`` runs the
claim suite on them through generated families, and ``table`` compares and renders. The
``mechtests validate`` command (``cli``) does all of it.
"""
