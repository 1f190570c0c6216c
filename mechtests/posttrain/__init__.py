"""A real post-training of our own: the Gemma-3-270M base -> an ``instruct`` LoRA adapter.

The paper compares base models with their post-trained versions (Du et al. 2025); a real small
base has no safety-tuned sibling that runs on CPU, so this package makes one. Modules: the data
(:mod:`.data`: AdvBench refusals, self-distilled Alpaca answers, the refusal test split held out),
the base checkpoint (:mod:`.base`), training (:mod:`.train`), the gates (:mod:`.evaluate`), the
build (:mod:`.build`, ``mechtests posttrain build``) and the ``lora:<adapter>@<base ref>``
checkpoint reference that merges the shipped adapter into the base (:mod:`.checkpoints`).
"""
