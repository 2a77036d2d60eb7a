"""Readers for the evaluation datasets (RefCOCO-format REC, COCO captions, COCO instances)."""
