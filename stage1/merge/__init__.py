"""Phase 3: splice trained students into a SAM3 checkpoint, checked key by key; the file's
layout is :mod:`sam3.schema`. Entry points: ``stage1/convert_*_weights_stage1.py``."""
