"""Per-chip figures of the Cloud TPU generations we target, and the slice names users rent.

Peak bfloat16 FLOP/s and HBM bandwidth per chip from Google Cloud's public TPU architecture pages
(cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e); usable HBM from the TPU compiler itself. They feed the fit
check (HBM) and the roofline estimate (time >= max(FLOPs / peak, bytes / bandwidth)); collectives are not in
it.
"""
from __future__ import annotations

import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Figures per jax device: one chip (v4 and v5p in megacore mode, as JAX runs them on a TPU VM: its
    two TensorCores are one device). hbm_bytes is what the TPU compiler lets a program use (its
    "available HBM" when it refuses one), a little under the nominal capacity: 30.75 of a v4 chip's 32
    GiB, 15.75 of a v5e chip's 16 GiB, 95.74 GiB on a v5p chip, 31.25 of a v6e chip's 32 GiB."""
    name: str
    hbm_bytes: int
    bf16_flops: float  # peak
    hbm_bytes_per_s: float


CHIPS = {
    "v4": Chip("v4", int(30.75 * GIB), 275e12, 1200e9),
    "v5e": Chip("v5e", int(15.75 * GIB), 197e12, 819e9),
    "v5p": Chip("v5p", int(95.74 * GIB), 459e12, 2765e9),
    "v6e": Chip("v6e", int(31.25 * GIB), 918e12, 1638e9),
}

# Accelerator types as Cloud TPU names them -> libtpu topology names. v4 and v5p count TensorCores
# (two per chip: a v4-8 is 4 chips), v5e and v6e count chips; a slice of more than 8 v5e/v6e chips (4
# v4/v5p) spans hosts.
SLICES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
    "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8",
}


def topology_name(name: str) -> str:
    """'v5e-8' or 'v5e:2x4' -> the libtpu topology name 'v5e:2x4'."""
    if name in SLICES:
        return SLICES[name]
    chip, _, shape = name.partition(":")
    dims = shape.split("x")
    if chip in CHIPS and len(dims) in (2, 3) and all(d.isdigit() and int(d) > 0 for d in dims):
        return name
    raise ValueError(f"--topology={name!r}: expected a slice name ({', '.join(SLICES)}) or a "
                     f"chip:shape such as 'v5e:2x4' (chips: {', '.join(CHIPS)}).")


def chip_of(topology: str) -> Chip:
    return CHIPS[topology_name(topology).partition(":")[0]]

