"""The claim suite: a few generic tests parametrized over (family, model pair, claim).

Run it with ``pytest --pyargs mechtests.suite`` (or ``mechtests run``); options are listed
under "mechtests" in ``pytest --help``.
"""
