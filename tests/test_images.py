"""The backend's one image loader: 8/16-bit, grey/RGB/RGBA/palette frames and exact label masks, and
one DataError naming the file for anything that does not decode."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.common.images import (
    DataError,
    check_images,
    image_size,
    load_rgb,
    read_image,
    read_mask,
    read_render,
    real_images,
)
from blender_addon.core import png

RAMP = np.concatenate([np.arange(0, 65536, 257), [1, 128, 129, 32767, 32768, 65534]]).astype(np.uint16)


def _grey16(path, values=RAMP):
    Image.fromarray(values.reshape(1, -1).repeat(2, 0)).save(path)
    return path


def _rgb16_png(a: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = a.shape
    rows = np.zeros((h, 1 + w * 6), np.uint8)
    rows[:, 1:] = a.astype(">u2").view(np.uint8).reshape(h, w * 6)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    path = _grey16(tmp_path / "frame16.png")
    want = np.round(RAMP / 257).astype(np.uint8)
    for got in (read_image(path), np.asarray(load_rgb(path))):
        assert got.dtype == np.uint8 and got.shape == (2, len(RAMP), 3)
        assert np.array_equal(got[0, :, 0], want) and np.array_equal(got[..., 1], got[..., 2])
    assert np.array_equal(read_image(path)[0, :256, 1], np.arange(256))  # the ramp 0..65535 -> 0..255
    assert check_images([path], 2, 8, None, "real") == [path]


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    a = np.random.default_rng(0).integers(0, 65536, (3, 5, 3)).astype(np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_rgb16_png(a))
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (3, 5, 3)
    assert np.abs(got.astype(int) - np.round(a / 257)).max() <= 1


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1"])
def test_8_bit_modes_decode_to_rgb_with_alpha_on_black(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    im = Image.fromarray(rgba if mode in ("RGBA", "LA") else rgba[..., :3]).convert(mode)
    im.save(tmp_path / "x.png")
    got = read_image(tmp_path / "x.png")
    assert got.dtype == np.uint8 and got.shape == (4, 6, 3)
    if mode in ("RGBA", "LA"):
        src = np.asarray(im.convert("RGBA")).astype(float)
        assert np.abs(got - src[..., :3] * src[..., 3:] / 255).max() <= 1  # composited on black
    else:
        assert np.array_equal(got, np.asarray(im.convert("RGB")))


def test_masks_keep_their_label_values_exactly(tmp_path):
    values16 = np.array([[0, 5, 300], [21, 65535, 1000]], np.uint16)
    Image.fromarray(values16).save(tmp_path / "m16.png")
    assert read_mask(tmp_path / "m16.png").tolist() == values16.tolist()
    values8 = np.array([[0, 5, 255], [21, 22, 31]], np.uint8)
    Image.fromarray(values8).save(tmp_path / "m8.png")
    assert read_mask(tmp_path / "m8.png").tolist() == values8.tolist()
    pal = Image.fromarray(values8, "L").convert("P")  # palette: the indices are the labels
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    pal.save(tmp_path / "mp.png")
    assert read_mask(tmp_path / "mp.png").tolist() == values8.tolist()
    Image.fromarray(np.repeat(values8[..., None], 3, 2)).save(tmp_path / "grey_rgb.png")
    assert read_mask(tmp_path / "grey_rgb.png").tolist() == values8.tolist()
    Image.fromarray(np.dstack([values8, values8, values8[::-1]])).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png"):
        read_mask(tmp_path / "colour.png")


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_or_garbage_images_raise_data_error_naming_them(tmp_path, cut):
    full = png.encode(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    bad = tmp_path / "render.png"
    bad.write_bytes(full[:int(len(full) * cut)])
    text = tmp_path / "notes.png"
    text.write_text("hello")
    for path in (bad, text):
        for read in (read_image, read_mask, load_rgb, read_render):
            with pytest.raises(DataError, match="cannot decode") as e:
                read(path)
            assert str(path) in str(e.value)
    with pytest.raises(DataError, match="notes.png"):
        image_size(text)
    assert image_size(bad) == (50, 40)  # the header alone is intact


def test_read_render_is_png_decode_for_our_files_and_read_image_for_others(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "ours.png").write_bytes(png.encode(a))
    assert np.array_equal(read_render(tmp_path / "ours.png"), a)
    _grey16(tmp_path / "grey16.png")
    assert np.array_equal(read_render(tmp_path / "grey16.png"), read_image(tmp_path / "grey16.png"))


def test_real_frames_come_from_folders_lists_and_single_images_never_hidden_files(tmp_path):
    frames = tmp_path / "frames"
    (frames / "video1").mkdir(parents=True)
    (frames / ".ipynb_checkpoints").mkdir()
    for p in (frames / "video1" / "a.png", frames / "b.jpg", frames / ".tmp-x.png", frames / "video1" / "._a.png",
              frames / ".ipynb_checkpoints" / "c.png", tmp_path / "single.png"):
        Image.new("RGB", (8, 8)).save(p)
    assert real_images([frames]) == [frames / "b.jpg", frames / "video1" / "a.png"]
    other = tmp_path / "elsewhere"  # a video's frames linked in are found; a link loop ends
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "d.png")
    (frames / "linked").symlink_to(other)
    (frames / "video1" / "loop").symlink_to(frames)
    assert real_images([frames]) == [frames / "b.jpg", frames / "linked" / "d.png", frames / "video1" / "a.png"]
    (frames / "linked").unlink()
    (frames / "video1" / "loop").unlink()
    listed = tmp_path / "list.txt"
    listed.write_text("# train frames\nframes/b.jpg\n\n")
    assert real_images([listed, tmp_path / "single.png"]) == [tmp_path / "frames" / "b.jpg", tmp_path / "single.png"]
    (tmp_path / "frames.bin").write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="frames.bin: not a folder, an image or a text list"):
        real_images([tmp_path / "frames.bin"])


def test_real_labelled_frames_are_decoded_up_front_and_a_preset_that_maps_nothing_is_refused(tmp_path):
    """A corrupt real image failed only when first drawn, hours into a training, inside a DataLoader worker;
    masks in which the preset finds no class trained on empty targets without a word; a macOS ._ file beside
    the frames stopped the run. Now: one error naming the file or the preset, before any work."""
    from backend.segmenter.data import real_samples
    from backend.segmenter.labels import SegmentError, load_preset

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, name in enumerate(["1_a", "1_b", "2_a"]):
        Image.new("RGB", (16, 12), (40 * i, 90, 60)).save(images / f"{name}.png")
        m = np.zeros((12, 16), np.uint8)
        m[2:6, 3:9] = 255 if name == "2_a" else 5 + i % 2  # binary 0/255 on one frame: unmapped, background
        Image.fromarray(m).save(masks / f"{name}.png")
    (images / "._1_a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    preset = load_preset("endoscapes")
    assert [s.image.name for s in real_samples(images, masks, preset)] == ["1_a.png", "1_b.png", "2_a.png"]
    with pytest.raises(SegmentError, match="none of the 3 masks holds a value it maps .*their values: 0, 5, 6, 255"):
        real_samples(images, masks, load_preset("cholecseg8k", r"^(?P<patient>\d+)_"))
    full = (images / "1_b.png").read_bytes()
    (images / "1_b.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="1_b.png: cannot decode") as err:
        real_samples(images, masks, preset)
    assert "\n" not in str(err.value)


def test_frame_lists_with_names_that_are_not_utf8_hash_as_their_bytes(tmp_path):
    """A Latin-1 file name (not UTF-8) crashed backend.train and backend.efficacy with a UnicodeEncodeError when
    their input lists were hashed; it hashes as its bytes, and UTF-8 names hash as before."""
    import hashlib
    import os

    from blender_addon.core.settings import lines_digest

    assert lines_digest(["a/café.png", "b.png"]) == hashlib.sha256("a/café.png\nb.png".encode()).hexdigest()[:16]
    latin1 = os.fsdecode(b"caf\xe9_1.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / latin1)
    frames = real_images([tmp_path])
    assert frames == [tmp_path / latin1]
    assert lines_digest(str(p) for p in frames) == hashlib.sha256(os.fsencode(frames[0])).hexdigest()[:16]


def test_a_mask_drawn_on_an_exif_rotated_frame_is_refused_with_the_reason(tmp_path):
    """Frames are read as stored (no EXIF rotation, like torchvision's decoders): a mask drawn on the displayed,
    rotated frame does not fit, and the error says why and how to fix the frame."""
    from backend.segmenter.data import real_samples
    from backend.segmenter.labels import SegmentError, load_preset

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (12, 20), (90, 60, 50)).save(images / "1_a.jpg", exif=exif)  # stored 12x20, shown 20x12
    Image.fromarray(np.full((12, 20), 5, np.uint8)).save(masks / "1_a.png")
    with pytest.raises(SegmentError, match=r"the mask is 20x12 but its image .* is 12x20 \(the image's EXIF says "
                                           r"to show it rotated \(90 degrees clockwise\)"):
        real_samples(images, masks, load_preset("endoscapes"))
