"""Stage-1 inputs: image preprocessing, SA-1B images, Recap-DataComp captions, rank sharding."""

from stage1.data.recap_datacomp import (
    CaptionShard,
    CaptionStats,
    caption_key,
    iter_captions,
    list_parquet_files,
)
from stage1.data.sa1b import SA1BImages, SA1BItem, SA1BListStats, collate_images, list_sa1b
from stage1.data.sharding import rank_of, select_rank
from stage1.data.transforms import (
    ImageTransform,
    build_valid_mask,
    build_valid_masks,
    check_preprocessing,
    preprocessing_record,
)

__all__ = [
    "CaptionShard",
    "CaptionStats",
    "ImageTransform",
    "SA1BImages",
    "SA1BItem",
    "SA1BListStats",
    "build_valid_mask",
    "build_valid_masks",
    "caption_key",
    "check_preprocessing",
    "collate_images",
    "iter_captions",
    "list_parquet_files",
    "list_sa1b",
    "preprocessing_record",
    "rank_of",
    "select_rank",
]
