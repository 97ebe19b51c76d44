"""Every Stage-1 config key with its default and one comment, and the values each may take.

Loading, merging and validation are in :mod:`stage1.common.config`; this module only states the
tree (YACS), the choices of the keys that take a name (:data:`CHOICES`) and the range of the
numeric ones (:data:`RANGES`).
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

# DATA.DATASET's datasets and the kind of student each trains (one per kind: the kind's own)
DATASET_KINDS = {"sa1b": "image", "recap_datacomp": "text"}

_C = CN()
_C.BASE = [""]  # parent YAML files, merged first (paths relative to the YAML)

# ----------------------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.DATA_PATH = "data/sa-1b"  # dataset root (SA-1B layout, or a folder of parquet files)
# what the data under DATA_PATH is: "sa1b" (images), "recap_datacomp" (captions) or "" (the
# entry point's own: sa1b for the image entry points, recap_datacomp for the text ones)
_C.DATA.DATASET = ""
_C.DATA.SPLITS = ["train", "val"]  # SA-1B splits to export (training validates on "val")
_C.DATA.NUM_SAMPLES = 0  # use only the first N items of each split in sorted order (0 = all)
_C.DATA.BATCH_SIZE = 8  # images / captions per step and per process
_C.DATA.NUM_WORKERS = 4  # DataLoader worker processes per rank
_C.DATA.PIN_MEMORY = True  # page-locked host batches (only used with CUDA)
_C.DATA.IMG_SIZE = 1008  # network input side in pixels (SAM3: 1008)
_C.DATA.RESIZE_MODE = "pad"  # "pad": longest side to IMG_SIZE + pad; "squash": both sides
_C.DATA.PIXEL_MEAN = [0.5, 0.5, 0.5]  # normalisation mean on [0, 1] RGB (SAM3's)
_C.DATA.PIXEL_STD = [0.5, 0.5, 0.5]  # normalisation std on [0, 1] RGB (SAM3's)
_C.DATA.CAPTION_COLUMN = "re_caption"  # Recap-DataComp column holding the caption
_C.DATA.KEY_COLUMN = "key"  # column holding a unique id (missing: a hash of the caption)
_C.DATA.PARQUET_BATCH_ROWS = 8192  # rows read from parquet at a time (bounded memory)
_C.DATA.TRAIN_SPLIT = "train"  # SA-1B split an image student trains on
_C.DATA.VAL_SPLIT = "val"  # SA-1B split validated on each epoch ("" = no validation)
_C.DATA.VAL_FRACTION = 0.01  # captions held out for validation, chosen by a hash of the key

# ----------------------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.RESUME = "sam3_checkpoints/sam3.pt"  # SAM3 checkpoint the teacher is loaded from
_C.MODEL.TEACHER_ARCH = "sam3"  # teacher architecture: "sam3" or "sam3_tiny" (smoke runs)
_C.MODEL.ALLOW_RANDOM_TEACHER = False  # opt-in: random teacher weights when RESUME is empty
_C.MODEL.BACKBONE = ""  # student name (phase 2)
_C.MODEL.PRETRAINED = ""  # local weight file to initialise the student from (phase 2)

# ----------------------------------------------------------------------------- distillation
_C.DISTILL = CN()
_C.DISTILL.TEACHER_EMBED_PATH = ""  # embedding store folder ("" = OUTPUT/embeddings)
# True: train on a public EfficientSAM3 store (no manifest): record shape from EMBED_DIM/EMBED_SIZE
# or CONTEXT_LENGTH/TEXT_DIM; setting it confirms the store was made with this config's DATA.*
_C.DISTILL.ACCEPT_LEGACY_STORE = False
_C.DISTILL.EMBED_DIM = 1024  # channels of a stored image embedding (trunk width)
_C.DISTILL.EMBED_SIZE = 72  # side of a stored image embedding (IMG_SIZE / 14)
_C.DISTILL.TEXT_DIM = 256  # width of a stored text embedding (after SAM3's resizer)
_C.DISTILL.CONTEXT_LENGTH = 32  # tokens per caption in the text store (SAM3: 32)
_C.DISTILL.STORE_DTYPE = "float16"  # store encoding: "float16" or "int8" (per-channel scale)
_C.DISTILL.EXPORT_PRECISION = "fp32"  # teacher precision during export: "fp32" or "bf16"
_C.DISTILL.FORCE = False  # export even when the disk looks too small for the store
_C.DISTILL.VERIFY_SAMPLES = 8  # records recomputed with the teacher by --check-saved-embed
_C.DISTILL.PIXEL_WISE = 1.0  # weight of the masked MSE term of the loss
_C.DISTILL.COSINE = 1.0  # weight of the masked (1 - cosine) term of the loss
_C.DISTILL.MSE_REDUCTION = "sum_channels"  # MSE per cell: "sum_channels" (published) or "mean"
_C.DISTILL.MASK_PAD_TOKENS = True  # text: padding tokens ignored by the loss and attention

# ----------------------------------------------------------------------------- training
_C.TRAIN = CN()
_C.TRAIN.EPOCHS = 50  # passes over the training split
_C.TRAIN.WARMUP_EPOCHS = 5  # linear warm-up length (per optimizer step, in epochs)
_C.TRAIN.BASE_LR = 1e-3  # peak learning rate at the reference batch LR_SCALE_BATCH
_C.TRAIN.LR_SCALE_BATCH = 512  # the 3 lr keys x BATCH_SIZE * world * ACCUMULATION / this (0: off)
_C.TRAIN.WARMUP_LR = 1e-6  # learning rate at the first step, at the reference batch
_C.TRAIN.MIN_LR = 1e-5  # learning rate at the end of the cosine decay, at the reference batch
_C.TRAIN.WEIGHT_DECAY = 0.01  # AdamW weight decay (never on norms, biases, embeddings' 1-D)
_C.TRAIN.LAYER_DECAY = 1.0  # layer-wise lr decay factor for timm students (1.0 = off)
_C.TRAIN.CLIP_GRAD = 5.0  # gradient-norm clip (0 = off)
_C.TRAIN.ACCUMULATION_STEPS = 1  # micro-batches per optimizer step
_C.TRAIN.AMP = "auto"  # "auto" (bf16 on CPU, fp16 + scaler on CUDA), "bf16", "fp16", "off"
_C.TRAIN.AUTO_RESUME = True  # continue from the newest ckpt_epoch_N.pth in OUTPUT
_C.TRAIN.FRESH_START = ""  # AUTO_RESUME off, checkpoints in OUTPUT: "move", "delete" ("" refuses)
_C.TRAIN.SAVE_FREQ = 1  # epochs between checkpoints (the last epoch is always saved)
_C.TRAIN.MAX_STEPS_PER_EPOCH = 0  # cap on steps per epoch, for smoke runs (0 = full epoch)

# ----------------------------------------------------------------------------- misc
_C.OUTPUT = "output"  # run folder: config.json, logs, embeddings, checkpoints
_C.TAG = "default"  # free-form run name, recorded in config.json and logs
_C.SEED = 0  # base random seed (each rank adds its rank)
_C.DEVICE = ""  # "cuda", "cpu", "cuda:1"...; "" = cuda when available, else cpu
_C.LOG_EVERY = 20  # steps between the export's log lines / the training's TensorBoard scalars

CHOICES = {
    "DATA.DATASET": ("", *DATASET_KINDS),
    "DATA.RESIZE_MODE": ("pad", "squash"),
    "MODEL.TEACHER_ARCH": ("sam3", "sam3_tiny"),
    "DISTILL.STORE_DTYPE": ("float16", "int8"),
    "DISTILL.EXPORT_PRECISION": ("fp32", "bf16"),
    "DISTILL.MSE_REDUCTION": ("sum_channels", "mean"),
    "TRAIN.AMP": ("auto", "bf16", "fp16", "off"),
    "TRAIN.FRESH_START": ("", "move", "delete"),
}


# numeric keys and the range each must lie in: (key, lowest, highest, lowest allowed itself)
RANGES = (
    ("DATA.NUM_SAMPLES", 0, None, True),
    ("DATA.BATCH_SIZE", 1, None, True),
    ("DATA.NUM_WORKERS", 0, None, True),
    ("DATA.IMG_SIZE", 1, None, True),
    ("DATA.PARQUET_BATCH_ROWS", 1, None, True),
    ("DATA.VAL_FRACTION", 0.0, 1.0, True),
    ("DISTILL.EMBED_DIM", 1, None, True),
    ("DISTILL.EMBED_SIZE", 1, None, True),
    ("DISTILL.TEXT_DIM", 1, None, True),
    ("DISTILL.VERIFY_SAMPLES", 0, None, True),
    ("DISTILL.PIXEL_WISE", 0.0, None, True),
    ("DISTILL.COSINE", 0.0, None, True),
    ("TRAIN.EPOCHS", 1, None, True),
    ("TRAIN.WARMUP_EPOCHS", 0, None, True),
    ("TRAIN.BASE_LR", 0.0, None, False),
    ("TRAIN.LR_SCALE_BATCH", 0, None, True),
    ("TRAIN.WARMUP_LR", 0.0, None, True),
    ("TRAIN.MIN_LR", 0.0, None, True),
    ("TRAIN.WEIGHT_DECAY", 0.0, None, True),
    ("TRAIN.LAYER_DECAY", 0.0, 1.0, False),
    ("TRAIN.CLIP_GRAD", 0.0, None, True),
    ("TRAIN.ACCUMULATION_STEPS", 1, None, True),
    ("TRAIN.SAVE_FREQ", 1, None, True),
    ("TRAIN.MAX_STEPS_PER_EPOCH", 0, None, True),
    ("LOG_EVERY", 1, None, True),
)


def get_default_config() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
