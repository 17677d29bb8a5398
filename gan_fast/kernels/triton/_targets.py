"""What a GPU target can hold: the one rule that drops autotune configs that cannot fit.

Used at run time by the autotuners' ``early_config_prune`` (conv_fwd, conv_bwd) and
ahead of time by ``gan_fast.aot``, which compiles for sm_80 / sm_90a without a GPU and
checks the rule against the shared memory the real compiler allocates.

``target(cap, sms)`` is the context ``gan_fast.aot`` uses to make the host launchers
take their GPU decisions (TF32, tile sizes, split counts, autotune pruning) for a
target that is not present.
"""
from __future__ import annotations

import contextlib

# Largest dynamic shared memory one block may opt into, bytes (CUDA programming guide,
# "compute capabilities" table: 163 KB on 8.0/8.7, 99 KB on 8.6/8.9/12.x, 227 KB on 9.0/10.x).
SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448,
              100: 232448, 103: 232448, 120: 101376}
DEFAULT_SMEM_LIMIT = 101376     # unknown capability: the smallest of the recent ones
STATIC_SMEM = 1024            # what a Triton kernel holds besides its buffers (cuobjdump SHARED)
# Streaming multiprocessors of the usual part of each target (A100, H100 SXM), used
# only when compiling ahead of time without a device.
TARGET_SMS = {80: 108, 90: 132}

_override: tuple[int, int] | None = None   # (capability, SMs) while gan_fast.aot captures
_cap_cache: dict = {}


@contextlib.contextmanager
def target(cap: int, sms: int | None = None):
    """Host launchers decide as on a GPU of capability ``cap`` (e.g. 80, 90)."""
    global _override
    old, _override = _override, (int(cap), int(sms or TARGET_SMS.get(cap, 108)))
    try:
        yield
    finally:
        _override = old


def is_gpu(device) -> bool:
    """True for a CUDA device, or while compiling ahead of time for a GPU target."""
    return _override is not None or device.type == "cuda"


def capability(device) -> int | None:
    """Compute capability as an int (80, 90, ...), or None off the GPU (interpreter)."""
    if _override is not None:
        return _override[0]
    if device.type != "cuda":
        return None
    idx = device.index if device.index is not None else -1
    if idx not in _cap_cache:
        import torch
        major, minor = torch.cuda.get_device_capability(device)
        _cap_cache[idx] = major * 10 + minor
    return _cap_cache[idx]


def num_sms(device) -> int:
    if _override is not None:
        return _override[1]
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def smem_limit(cap: int | None) -> int | None:
    return None if cap is None else SMEM_LIMIT.get(cap, DEFAULT_SMEM_LIMIT)


def gemm_smem_bytes(cfg, a_bytes: int, b_bytes: int | None = None, a_tiles: int = 1,
                    b_tiles: int = 1) -> int:
    """Shared memory of a pipelined tl.dot kernel with this config (upper estimate):
    num_stages buffers of each A (BLOCK_M x BLOCK_K) and B (BLOCK_K x BLOCK_N) operand
    tile that is loaded from memory (a_tiles, b_tiles: 2 where an operand is rebuilt
    from two tensors, e.g. dy from grad_out and y), one more of the rebuilt operand,
    or the fp32 accumulator tile if the epilogue's layout conversion needs more."""
    kw = cfg.kwargs
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
    b_bytes = a_bytes if b_bytes is None else b_bytes
    a_tile, b_tile = bm * bk * a_bytes, bk * bn * b_bytes
    pipe = max(cfg.num_stages, 1) * (a_tiles * a_tile + b_tiles * b_tile)
    pipe += (a_tile if a_tiles > 1 else 0) + (b_tile if b_tiles > 1 else 0)
    return max(pipe, bm * bn * 4) + STATIC_SMEM


REG_BUDGET = 80   # register cost (below) above which sm_80/sm_90a compiles spilled (gan-fast aot)
REBUILT_BUDGET = 96   # the same for GEMMs with an operand rebuilt from two tensors (dgrad, wgrad)
REBUILT_MAX_STAGES = 3


def reg_cost(cfg, a_tiles: int = 1, b_tiles: int = 1, nbytes: int = 2, strided: bool = False) -> int:
    """Per-thread register pressure, in 32-bit values: the fp32 accumulator, half of the
    A and B tiles as loaded (twice that for fp32/TF32 operands), and, for an operand
    rebuilt from two tensors (dy from grad_out and y, both fp32 in registers while dy is
    formed, whatever the dtype), 2 values per element, or 4 when those loads go to
    registers one element at a time (``strided``, the caller says: grad_out/y not
    contiguous along the channels, NCHW or a 1x1 input; in the dgrad only for 2-byte
    dtypes, whose elements are below cp.async's 4 bytes).
    Calibrated on what gan-fast aot measured: 128x64x64 with 4 warps (112) spills on
    sm_80, 128x128x64 with 8 (96) does not; the strided wgrad of G1 (ConvTranspose from
    1x1) spills at 64x64x32/4 warps (112) and 64x128x32/8 (108), not at 128x64x32/8 (76)."""
    kw = cfg.kwargs
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
    t = 32 * cfg.num_warps
    a, b = bm * bk // t, bk * bn // t
    rebuilt = (a if a_tiles > 1 else 0) + (b if b_tiles > 1 else 0)
    scale = max(nbytes, 2) // 2   # fp32/TF32 operands hold twice the registers
    return bm * bn // t + scale * ((a + b) // 2) + (4 if strided else 2) * rebuilt


def fits(cfg, cap: int | None, a_bytes: int, b_bytes: int | None = None, a_tiles: int = 1,
         b_tiles: int = 1, strided: bool = False) -> bool:
    """The rule: a config is kept for a target iff its shared memory fits the target, its
    register cost is within REG_BUDGET (REBUILT_BUDGET with a rebuilt operand), its warps
    make whole warp groups on sm_90+ (wgmma), for 4-byte (fp32/TF32) operands its K tile
    is at most 32 wide (128 bytes a row; wider fp32 tiles spill), and with an operand
    rebuilt from two tensors it has at most REBUILT_MAX_STAGES stages (ptxas holds the
    rebuilt operand's next loads in registers per stage: 128x64x32/8 warps spills 16 B
    with 4 stages on sm_80, none with 3)."""
    if cap is not None and cap >= 90 and cfg.num_warps % 4:
        return False   # wgmma needs whole warp groups: a 2-warp tile falls back to mma.sync
    if not _shape_ok(cfg, a_bytes, a_tiles, b_tiles):
        return False
    budget = REBUILT_BUDGET if a_tiles > 1 or b_tiles > 1 else REG_BUDGET
    if reg_cost(cfg, a_tiles, b_tiles, a_bytes, strided) > budget:
        return False
    limit = smem_limit(cap)
    return limit is None or gemm_smem_bytes(cfg, a_bytes, b_bytes, a_tiles, b_tiles) <= limit


def _shape_ok(cfg, a_bytes: int, a_tiles: int, b_tiles: int) -> bool:
    """The register-independent part of the rule for tile shapes and stages."""
    if a_bytes >= 4 and cfg.kwargs["BLOCK_K"] > 32:
        return False
    if a_tiles > 1 or b_tiles > 1:
        if cfg.num_stages > REBUILT_MAX_STAGES:
            return False
        # fp32 dgrad (rebuilt A): ptxas gives 8-warp blocks 80-128 registers and spills on
        # sm_80 (64x128x32: 8 B on D3/D4 channels_last, 128x64x32: 12 B on D2 NCHW,
        # 64x64x32: 4 B on G2 NCHW); 64x64x32 with 4 warps holds 151-156, no spill
        if a_bytes >= 4 and a_tiles > 1 and cfg.num_warps > 4:
            return False
    return True


def prune_to_target(configs, device, a_bytes: int, b_bytes: int | None = None, a_tiles: int = 1,
                    b_tiles: int = 1, strided: bool = False):
    """``configs`` less those that cannot fit the device's target (never empty: if none
    fits, the one nearest the rule is kept, and gan-fast aot reports what it costs). Off the GPU
    (the interpreter) nothing is dropped."""
    cap = capability(device)
    if cap is None:
        return list(configs)
    kept = [c for c in configs if fits(c, cap, a_bytes, b_bytes, a_tiles, b_tiles, strided)]
    # none fits: the config nearest the rule (whole warp groups on sm_90+, then the shape
    # and stage limits, then the fewest registers), so a launch still runs
    return kept or [min(configs, key=lambda c: (cap >= 90 and c.num_warps % 4 != 0,
                                                 not _shape_ok(c, a_bytes, a_tiles, b_tiles),
                                                 reg_cost(c, a_tiles, b_tiles, a_bytes, strided),
                                                 gemm_smem_bytes(c, a_bytes, b_bytes, a_tiles, b_tiles)))]
