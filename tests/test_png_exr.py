import imageio.v3 as iio
import numpy as np
import pytest

from blender_addon.core import png


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (4, 3, 4)])
def test_png_encoder_is_standard(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = png.encode(a)
    assert np.array_equal(iio.imread(data, extension=".png"), a)
    assert np.array_equal(png.decode(data), a)


def test_png_decode_falls_back_for_foreign_files():
    a = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    data = iio.imwrite("<bytes>", a, extension=".png")  # Pillow uses adaptive filters
    assert np.array_equal(png.decode(data), a)


def test_exr_reader_matches_openexr_on_a_real_render(tmp_path):
    """Our numpy reader against the OpenEXR library, on passes Blender really wrote."""
    OpenEXR = pytest.importorskip("OpenEXR", reason="the OpenEXR package is a test dependency")
    import bpy

    from blender_addon.config import RenderSettings
    from blender_addon.engine import configure_cycles
    from blender_addon.exr import read_exr
    from blender_addon.labels import passes_from_exr
    from blender_addon.pipeline import draw_frame
    from blender_addon.scene import PatientScene
    from conftest import MESHES

    settings = RenderSettings(meshes=str(MESHES), out=str(tmp_path), resolution="40x24")
    scene = PatientScene(MESHES / "patient07", max_tools=settings.max_tools)
    configure_cycles(scene.scene, samples=1, denoise=False)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = 40, 24
    d = draw_frame(np.random.default_rng(0), scene, settings)
    scene.pose(d.camera, d.light, d.tools, d.materials, 1)
    path = str(tmp_path / "passes.exr")
    scene.scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    ours = read_exr(path)
    with OpenEXR.File(path, separate_channels=True) as f:
        theirs = {name: ch.pixels for part in f.parts for name, ch in part.channels.items()}
    assert set(ours) == set(theirs)
    for name, pixels in theirs.items():
        assert np.array_equal(ours[name], pixels.astype(np.float32)), name
    passes = passes_from_exr(ours)
    assert passes["rgb"].shape == (24, 40, 3) and passes["index"].shape == (24, 40)
