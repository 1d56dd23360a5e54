"""Install vregion (and its Triton kernels as `vregion_kernels`)."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="vregion",
    version="0.1.0",
    description="Train LLaVA-style vision-language models cheaply: visual-region tuning, "
    "visual context compression and VPG transfer on DeepSpeed ZeRO",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `kernels/` installs as `vregion_kernels`: a top-level `kernels` would shadow the Hugging Face
    # package of that name, which transformers probes at import time.
    packages=find_packages(include=["vregion", "vregion.*"]) + ["vregion_kernels", "vregion_configs"],
    package_dir={"vregion_kernels": "kernels", "vregion_configs": "configs"},
    package_data={"vregion_configs": ["*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.15",
        "transformers>=5.17",  # the runner needs masking_utils as in 5.17+ (docs/dependencies.md)
        "peft>=0.13",
        "webdataset>=0.2.100",
        "triton>=3.0",
        "wandb>=0.17",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "pillow>=10.0",
        "numpy>=1.24",
        "tqdm>=4.66",
        "gguf>=0.10",
        "matplotlib>=3.8",
        "sentencepiece>=0.2",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.5"],
        # `vregion serve`: Flask is small, pure Python, and changes none of torch/transformers/hub/deepspeed.
        "serve": ["flask>=3.0"],
        "test": ["pytest>=8.0", "pytest-timeout>=2.3", "scikit-image>=0.22",  # skimage: bundled test photos
                 "import-linter>=2.0",  # tests/test_architecture.py: the .importlinter layers contract
                 "selenium>=4.20"],  # tests/chat: drives Debian's chromium through its chromedriver
    },
    entry_points={"console_scripts": ["vregion=vregion.cli:run"]},
)
