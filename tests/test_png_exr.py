import imageio.v3 as iio
import numpy as np
import pytest

from blender_addon import png


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
