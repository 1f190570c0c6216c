"""``mechtests bench``: the claim matrix of one family, timed per phase.

* :mod:`mechtests.bench.cli`: the sub-command (arguments, the timed run);
* :mod:`mechtests.bench.phases`: exclusive per-phase accounting (time, items, memory);
* :mod:`mechtests.bench.flops`: analytic FLOP counting and reference bf16 peaks;
* :mod:`mechtests.bench.table`: the JSON result and the Markdown phase table.
"""
