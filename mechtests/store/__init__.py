"""Caches on disk, keyed by everything that changes what they hold.

* :mod:`mechtests.store.keys`: checkpoint fingerprints and key hashes;
* :mod:`mechtests.store.activations`: the safetensors activation cache (:class:`ActivationStore`);
* :mod:`mechtests.store.results`: the checked JSON side caches (steering, generations, any
  measured intermediate).

Every write goes through one atomic writer (:mod:`mechtests.checkpoints.atomic`: temp file,
fsync, rename); the activation cache holds one file lock per entry while it computes it.
"""

from mechtests.store.activations import ActivationStore
from mechtests.store.keys import fingerprint_checkpoint, hash_key, hash_prompts
from mechtests.store.results import (
    Validator,
    number_list_problem,
    read_checked,
    texts_problem,
    write_checked,
)

__all__ = ["ActivationStore", "Validator", "fingerprint_checkpoint", "hash_key", "hash_prompts",
           "number_list_problem", "read_checked", "texts_problem", "write_checked"]
