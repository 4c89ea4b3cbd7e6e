"""Models of the market: known architectures, packages (manifest + safetensors), the digits demo model.

No pickle anywhere: a model is a manifest naming a known architecture plus safetensors weights.
"""

from market.models.architectures import architecture_names, build_module
from market.models.package import (
    LoadedModel,
    ModelNotFoundError,
    ModelStore,
    load_from_bytes,
    load_package,
    pack,
    read_package,
    verify_bytes,
)

__all__ = [
    "LoadedModel",
    "ModelNotFoundError",
    "ModelStore",
    "architecture_names",
    "build_module",
    "load_from_bytes",
    "load_package",
    "pack",
    "read_package",
    "verify_bytes",
]
