"""The preflight: every input of a claim run checked once, before any model loads.

* :mod:`mechtests.preflight.run`: what a run needs checked (invocation, options, the selected
  claims of each family) and the entry point the pytest plugin calls;
* :mod:`mechtests.preflight.checkpoints`: checkpoints, model pairs, layers, readouts, templates;
* :mod:`mechtests.preflight.datasets`: dataset files, labels and prompt lengths.
"""

from mechtests.preflight.run import (
    check_family,
    check_invocation,
    check_options,
    check_rules,
    run_preflight,
    targets_claim_suite,
)

__all__ = ["check_family", "check_invocation", "check_options", "check_rules", "run_preflight",
           "targets_claim_suite"]
