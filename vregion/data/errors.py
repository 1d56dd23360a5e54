"""Per-sample failures of the data pipeline, each with a short reason key that the loader counts."""

from __future__ import annotations

# Reason keys reported in a batch's `skipped` dict. A trainer sums them across ranks; they are stable names.
MALFORMED = "malformed"  # conversation structure or JSON member unusable
MISSING_JSON = "missing_json"  # tar sample without its .json member (e.g. a partially written sample)
INCOMPLETE_SAMPLE = "incomplete_sample"  # image members missing from the tar (num_images says more)
IMAGE_COUNT_MISMATCH = "image_count_mismatch"  # <image> tags != images stored with the sample
NO_SUPERVISED_TOKENS = "no_supervised_tokens"  # nothing for the loss (no assistant answer)
TRUNCATED_NO_SUPERVISION = "truncated_no_supervision"  # max_length cut away every supervised token
TOKENIZATION_MISMATCH = "tokenization_mismatch"  # decoded ids do not give back the rendered text
BAD_IMAGE = "bad_image"  # image bytes PIL cannot decode
TAR_ERROR = "tar_error"  # a tar shard could not be read (truncated, corrupt, missing)


class SampleError(ValueError):
    """A sample that cannot be trained on; `reason` is one of the keys above (or another short key)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
