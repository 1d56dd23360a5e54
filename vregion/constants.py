"""Constants shared by every layer: the label value that takes no loss, and the precision names' dtypes."""

import torch

# Label of a token that takes no loss (prompt, image, padding): torch cross_entropy's default ignore_index.
IGNORE_INDEX = -100

# Precision name (deepspeed.precision, the --dtype flags) -> parameter dtype.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
