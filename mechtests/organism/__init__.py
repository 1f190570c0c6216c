"""The organism: a tiny Llama-architecture base / SFT / instruct / control family trained offline.

A stand-in for real post-trained checkpoints (Du et al. 2025), built from a seeded synthetic
world (:mod:`.world`), with built-in datasets in the paper's layout (:mod:`.datasets`), corpora
(:mod:`.corpus`), training stages (:mod:`.train`), behaviour gates (:mod:`.gates`), the build
with seed retry and model card (:mod:`.build`) and the ``organism:<size>/<role>`` checkpoint
scheme (:mod:`.checkpoints`). Design and measured numbers: the organism study
(fixtures/organism/README.md).
"""
