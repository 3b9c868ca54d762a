import numpy as np
import pytest
from PIL import Image

from detzoo.errors import DetzooError
from detzoo.images import ImageError, decode_image, demo_dir, folder_records, list_images


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "RGB"])
def test_decode_converts_every_mode_to_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.png" if mode != "CMYK" else "x.jpg")
    im.save(path)
    out = decode_image(path)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    if mode == "RGBA":  # alpha dropped, colour kept
        np.testing.assert_array_equal(out, rgb)
    if mode == "L":
        assert (out[..., 0] == out[..., 1]).all()


def test_sixteen_bit_png_scaled_to_8_bit(tmp_path):
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = decode_image(tmp_path / "d.png")
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_wrong_extension_is_read_by_content(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "really_a_png.jpg", format="PNG")
    assert decode_image(tmp_path / "really_a_png.jpg")[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 40])
def test_corrupt_images_raise_image_error(tmp_path, content):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match="bad.jpg"):
        decode_image(p)


def test_huge_image_refused(tmp_path, monkeypatch):
    import detzoo.images

    monkeypatch.setattr(detzoo.images, "MAX_PIXELS", 100)
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="refused"):
        decode_image(tmp_path / "big.png")


def test_listing_errors_and_records(tmp_path):
    with pytest.raises(DetzooError, match="not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(DetzooError, match="holds no images"):
        list_images(tmp_path)
    for n in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [r.path.name for r in folder_records(tmp_path)] == ["a.jpg", "b.png"]


def test_demo_splits_are_disjoint_and_real():
    calib, check, ev = (list_images(demo_dir(s)) for s in ("calib", "check", "eval"))
    assert len(calib) >= 20 and len(check) >= 20 and len(ev) >= 32
    names = [{p.name for p in split} for split in (calib, check, ev)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert decode_image(ev[0]).shape == (576, 768, 3)
