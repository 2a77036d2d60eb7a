"""Converters: local grounded datasets (COCO, Visual Genome) -> webdataset tars in img2dataset's layout."""
