"""Knowledge and cross-model patching: model visits and caches (``runs``), the per-dataset
judgement (``aggregate``) and the measures of the knowledge and crossmodel claims (``measures``)."""
