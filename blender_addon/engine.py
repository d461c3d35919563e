"""Cycles set-up, device choice and rendering of one frame's passes (bpy).

All differences between Blender 4.5 LTS, 5.0 and 5.3 that matter here live in this file: the EXR
output settings (`use_multilayer_exr`) and shader node trees (`node_tree_of`). The passes go
straight from the render result into one uncompressed multilayer EXR, so no compositor node tree
(whose API changed in 5.0) is involved at all.
"""
from __future__ import annotations

import contextlib
import os

import bpy

from .core.errors import InputError
from .exr import read_exr
from .labels import pass_channel, passes_from_exr


class DeviceError(InputError):
    """`--device gpu` with no usable GPU (never a silent fall-back to the CPU)."""


def blender_version() -> str:
    return bpy.app.version_string


def use_multilayer_exr(image_settings) -> None:
    """The one Blender version switch: 5.0 split the file format into media type + format."""
    if bpy.app.version >= (5, 0, 0):
        image_settings.media_type = "MULTI_LAYER_IMAGE"
    image_settings.file_format = "OPEN_EXR_MULTILAYER"
    image_settings.color_depth = "32"
    image_settings.exr_codec = "NONE"  # read back by our numpy reader, and fastest to write
    if hasattr(image_settings, "use_exr_interleave"):  # 5.0+: one part, as 4.5 writes, is quicker to write
        image_settings.use_exr_interleave = True


def node_tree_of(idblock):
    """A material's or world's shader nodes: 5.0 always has them (use_nodes is deprecated there),
    4.5 creates them when use_nodes is switched on."""
    if bpy.app.version < (5, 0, 0):
        idblock.use_nodes = True
    return idblock.node_tree


def configure_cycles(scene, samples: int, denoise: bool, threads: int = 0, denoise_quality: str = "fast") -> None:
    scene.render.engine = "CYCLES"
    c = scene.cycles
    c.samples = samples
    c.preview_samples = samples
    c.use_denoising = denoise
    c.denoiser = "OPENIMAGEDENOISE"
    c.denoising_prefilter = "FAST"  # the accurate prefilter costs ~1.3 s a frame at 452x256 on 2 cores
    c.denoising_quality = denoise_quality.upper()  # FAST: ~10% less time a frame than HIGH, ~0.7 dB less PSNR
    c.use_adaptive_sampling = True
    c.max_bounces = 2  # one light at the lens: indirect light adds little beyond one bounce
    c.diffuse_bounces = 1
    c.glossy_bounces = 1
    c.transmission_bounces = 0
    c.volume_bounces = 0
    c.transparent_max_bounces = 2
    c.caustics_reflective = False
    c.caustics_refractive = False
    c.use_auto_tile = False
    scene.render.use_persistent_data = True  # keep the BVH and shaders between frames
    scene.render.threads_mode = "FIXED" if threads else "AUTO"
    if threads:
        scene.render.threads = threads
    scene.render.resolution_percentage = 100
    scene.render.use_compositing = False  # neither is used: skipping both saves a step after each render
    scene.render.use_sequencer = False
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "Standard"
    vl = scene.view_layers[0]
    vl.use_pass_z = True
    vl.use_pass_normal = True
    vl.use_pass_object_index = True
    use_multilayer_exr(scene.render.image_settings)


def use_vector_pass(scene, on: bool) -> None:
    """Cycles' motion-vector pass (clips): it is written only with motion blur off, and reads each moving
    object's pose at the neighbouring frames (scene.py keys them)."""
    scene.render.use_motion_blur = False
    scene.view_layers[0].use_pass_vector = on


def select_device(scene, device: str) -> str:
    """Use the CPU, or a GPU through OptiX or CUDA; refuse rather than fall back silently."""
    if device == "cpu":
        scene.cycles.device = "CPU"
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    for backend in ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"):
        try:
            prefs.compute_device_type = backend
        except TypeError:
            continue
        prefs.refresh_devices()
        gpus = [d for d in prefs.devices if d.type == backend]
        if not gpus:
            continue
        for d in prefs.devices:
            d.use = d.type == backend
        scene.cycles.device = "GPU"
        if prefs.has_active_device():
            if scene.cycles.use_denoising and backend == "OPTIX":
                scene.cycles.denoiser = "OPTIX"
            return f"{backend}: " + ", ".join(d.name for d in gpus)
    raise DeviceError("--device gpu: Cycles finds no usable GPU (tried OptiX, CUDA, HIP, oneAPI, Metal); "
                      "use --device cpu")


@contextlib.contextmanager
def quiet_stdout():
    """Cycles prints progress lines from C; keep the console for our own progress."""
    try:
        fd = os.dup(1)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)


def render_passes(scene, exr_path: str) -> dict:
    """Render the current frame and return its passes (rgb, depth, normal, index) as arrays."""
    scene.render.filepath = exr_path
    with quiet_stdout():
        bpy.ops.render.render(write_still=True)
    passes = passes_from_exr(read_exr(exr_path, keep=pass_channel))
    os.unlink(exr_path)
    return passes


def render_bare(scene) -> None:
    """An RGB render with no passes and no file: the baseline of the label-overhead benchmark."""
    vl = scene.view_layers[0]
    saved = (vl.use_pass_z, vl.use_pass_normal, vl.use_pass_object_index, vl.use_pass_vector)
    vl.use_pass_z = vl.use_pass_normal = vl.use_pass_object_index = vl.use_pass_vector = False
    try:
        with quiet_stdout():
            bpy.ops.render.render(write_still=False)
    finally:
        vl.use_pass_z, vl.use_pass_normal, vl.use_pass_object_index, vl.use_pass_vector = saved
