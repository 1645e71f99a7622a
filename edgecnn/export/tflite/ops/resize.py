"""Resize (decoders' nearest / bilinear upsampling) -> RESIZE_NEAREST_NEIGHBOR / _BILINEAR."""

from __future__ import annotations

from edgecnn.export.tflite.ops.base import Lowering, register

#: (mode, coordinate_transformation_mode) -> (builtin, align_corners, half_pixel_centers),
#: the pairs whose sampling grids TFLite's kernels reproduce exactly
RESIZES = {
    ("nearest", "asymmetric"): ("RESIZE_NEAREST_NEIGHBOR", False, False),
    ("nearest", "align_corners"): ("RESIZE_NEAREST_NEIGHBOR", True, False),
    ("linear", "half_pixel"): ("RESIZE_BILINEAR", False, True),
    ("linear", "pytorch_half_pixel"): ("RESIZE_BILINEAR", False, True),
    ("linear", "align_corners"): ("RESIZE_BILINEAR", True, False),
    ("linear", "asymmetric"): ("RESIZE_BILINEAR", False, False),
}


@register("Resize", propagates="both")
def lower_resize(ctx: Lowering, *, mode: str = "nearest",
                 coordinate_transformation_mode: str = "half_pixel",
                 nearest_mode: str = "round_prefer_floor", cubic_coeff_a: float = -0.75,
                 exclude_outside: int = 0, extrapolation_value: float = 0.0,
                 antialias: int = 0, keep_aspect_ratio_policy: str = "stretch") -> None:
    """Spatial resize of an NHWC tensor to the output's static H, W.

    nearest with asymmetric coordinates and floor rounding (`nn.Upsample(mode='nearest')`),
    or align_corners; linear with half_pixel (`align_corners=False`), align_corners or
    asymmetric coordinates. int8: the output shares the input's parameters.
    """
    x, y = ctx.input(0), ctx.output()
    if x.rank != 4:
        raise ctx.fail(f"only 2-D (rank-4) resizes are supported, got rank {x.rank}")
    if x.shape[0] != y.shape[0] or x.shape[3] != y.shape[3]:
        raise ctx.fail("only H and W may be resized")
    key = (mode, coordinate_transformation_mode)
    if key not in RESIZES or antialias or (mode == "nearest" and nearest_mode != "floor"
                                            and coordinate_transformation_mode == "asymmetric"):
        raise ctx.fail(f"mode {mode!r} with coordinate_transformation_mode "
                       f"{coordinate_transformation_mode!r}, nearest_mode {nearest_mode!r}, "
                       f"antialias {antialias} has no TFLite equivalent; supported: "
                       f"{', '.join('/'.join(k) for k in RESIZES)}")
    builtin, align_corners, half_pixel = RESIZES[key]
    ctx.emit(builtin, [x.name, ctx.int32("size", list(y.shape[1:3]))], [y.name],
             align_corners=align_corners, half_pixel_centers=half_pixel)
