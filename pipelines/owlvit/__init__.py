"""OWL-ViT v1 / OWLv2 open-vocabulary detector in JAX/Flax: the annotate stage's pseudo-labeler.

Entry point: `pipelines.owlvit.labeler.OwlVitLabeler.from_checkpoint(dir_or_hub_id)`.
"""
