"""Reports: parameter counts and latency of SAM3, the students and the merged models
(``stage1/compare_models.py``), the spec's published figures, and the pictures."""
