"""The packages that only some features need, imported when such a feature runs.

A VisTR model, its video processor and the post-processing of a video of one clip run with what
`REQUIRED_INSTALL` installs (transformers brings numpy, PyYAML and huggingface_hub; timm brings torchvision and
Pillow). Each package of `OPTIONAL_PACKAGES` serves a few features and is imported only through `require`, never
with an `import` statement: transformers' remote-code loader refuses a model file that names, in any `import`
outside a `try` block, a package that is not installed, so `from scipy.optimize import ...` even inside a function
would stop a Hub user without scipy from loading the model at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

# what a model folder's code needs to load and run (the same versions as pyproject.toml)
REQUIRED_PACKAGES = ("transformers>=5.0,<6", "torch", "timm")
# package -> the features that need it
OPTIONAL_PACKAGES = {
    "av": "reading video files (frame folders, images and arrays need no extra package)",
    "scipy": "Hungarian matching: linking the clips of a video longer than one clip, test-time flip averaging and "
    "the training loss",
    "pycocotools": "RLE masks (mask_format='rle', YouTube-VIS results)",
}


def _pip_install(packages: Iterable[str]) -> str:
    """The `pip install` line for `packages`, quoted where the shell would read a version bound as a redirection."""
    return "pip install " + " ".join(f'"{package}"' if "<" in package or ">" in package else package
                                     for package in packages)  # fmt: skip


REQUIRED_INSTALL = _pip_install(REQUIRED_PACKAGES)
FULL_INSTALL = _pip_install([*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES])


def require(module: str, feature: str) -> ModuleType:
    """`module` (e.g. "scipy.optimize"), imported; where its package is not installed, an ImportError of one line
    naming the package, the `feature` that needs it and the install command. A package that is installed but fails
    to import (a broken dependency of its own) raises its own error."""
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != package:
            raise
        message = f"{feature} needs the package {package}, which is not installed: pip install {package}"
        raise ImportError(message) from None


__all__ = ["FULL_INSTALL", "OPTIONAL_PACKAGES", "REQUIRED_INSTALL", "REQUIRED_PACKAGES", "require"]
