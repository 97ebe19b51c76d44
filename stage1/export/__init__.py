"""Phase 1: run the teacher (SAM3's vision trunk or text encoder) over a dataset and write its
outputs into a store. Entry points: ``stage1/save_embedding_{image,text}_stage1.py``."""
