"""The built-in synthetic sample corpus, split by responsibility.

- vocab:     colours, shapes, sizes, backgrounds and every word that may name them
- shapes:    unit polygons of each shape kind
- scene:     sampling a scene layout (which objects, where, how large) from a seeded rng
- render:    drawing background + objects, visible boxes after occlusion
- annotations: ground-truth regions and the per-image scene label
- alt_text:  noisy web-like alt-texts (training stream)
- captions:  clean reference captions (eval stream)
- refexp:    unambiguous RefCOCO-style referring expressions
- writers:   byte-deterministic tar and JSON writing
- web:       the img2dataset-style webdataset shards
- eval_set:  the RefCOCO/COCO-format evaluation directory

`pipelines/sample_corpus.py` is the command and the `generate()` API on top of these.
"""
