"""Phase 2: distil a student on the stored teacher outputs (DDP, AMP, resumable). Entry points:
``stage1/train_{image,text}_encoder_stage1.py``."""
