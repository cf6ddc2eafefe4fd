"""Network families (UNet; more blocks are added by adapters that need them)."""
from bench.nets.unet import UNet, UNetConfig, UNET_PRESETS, build_unet  # noqa: F401
