"""The OMZ accuracy checker's preprocessing, pixel for pixel, and image decoding that fails cleanly."""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data as skdata

from effnet.cli.options import render
from effnet.decode import center_crop, load_image, preprocess_image
from effnet.errors import ImageError
from effnet.preprocessing import Interpolation, PreprocessConfig, normalize

B7 = PreprocessConfig(600, 0.949)  # resize 632, crop 600
B0 = PreprocessConfig(224, 0.875)  # resize 256, crop 224


# --- an independent, literal transcription of the checker's steps ------------------------------------

def checker_crop(path: Path, size: int, short: int, resample=Image.BICUBIC) -> np.ndarray:
    """pillow_imread -> resize(aspect_ratio_scale='greater', use_pillow) -> crop(use_pillow), as OMZ writes them."""
    with open(path, "rb") as f:
        img = Image.open(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about P images with byte transparency
            data = np.array(img.convert("RGB"))
    image_h, image_w = data.shape[:2]
    if image_h > image_w:
        dst_w, dst_h = short, int(short * image_h / image_w)
    else:
        dst_w, dst_h = int(short * image_w / image_h), short
    data = np.array(Image.fromarray(data).resize((dst_w, dst_h), resample))
    height, width = data.shape[:2]
    i = int(round((height - size) / 2.0))
    j = int(round((width - size) / 2.0))
    return np.array(Image.fromarray(data).crop((j, i, j + size, i + size)))


def checker_normalize(crop: np.ndarray, mean, std) -> np.ndarray:
    """normalization: (data - mean) / std with Python-float tuples (float64), fed to the engine as float32 NCHW."""
    return ((crop - np.array(mean)) / np.array(std)).astype(np.float32).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(skdata.coffee())  # 600x400 RGB photo


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# --- the resize + crop rule ---------------------------------------------------------------------------

SIZES = [
    (500, 375),   # wide: 842x632, int() truncates 842.67
    (375, 500),   # tall: 632x842
    (300, 300),   # square: 632x632
    (100, 80),    # smaller than the crop: upscaled to 790x632
    (633, 632),   # long side 633: offset round(16.5) = 16 (half-up would say 17)
    (632, 635),   # tall, long side 635: offset round(17.5) = 18 (floor would say 17)
    (401, 400),   # 633.58 -> 633
    (402, 400),   # 635.16 -> 635
    (45, 700),    # very tall: 632x9831, offset round(4615.5) = 4616
]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_b7_crop_matches_checker(size, coffee, tmp_path):
    path = save(coffee.resize(size, Image.BILINEAR), tmp_path / "img.png")
    crop = center_crop(load_image(path, exif_transpose=False), B7)
    assert crop.dtype == np.uint8 and crop.shape == (600, 600, 3)
    np.testing.assert_array_equal(crop, checker_crop(path, 600, 632))


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (257, 256), (256, 259), (64, 64), (3, 2)])
@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_b0_like_crop_matches_checker(size, interpolation, coffee, tmp_path):
    config = PreprocessConfig(224, 0.875, interpolation=interpolation)
    assert config.resize_size == 256
    resample = {Interpolation.BICUBIC: Image.BICUBIC, Interpolation.BILINEAR: Image.BILINEAR}[interpolation]
    path = save(coffee.resize(size, Image.BILINEAR), tmp_path / "img.png")
    crop = center_crop(load_image(path, exif_transpose=False), config)
    assert crop.shape == (224, 224, 3)
    np.testing.assert_array_equal(crop, checker_crop(path, 224, 256, resample))


def test_bicubic_and_bilinear_differ(coffee):
    # Guards the test above: if both interpolations gave the same pixels, it could not tell them apart.
    bicubic = center_crop(coffee, B0)
    bilinear = center_crop(coffee, PreprocessConfig(224, 0.875, interpolation=Interpolation.BILINEAR))
    assert not np.array_equal(bicubic, bilinear)


@pytest.mark.parametrize(
    ("size", "resized", "box"),
    [
        ((500, 375), (842, 632), (121, 16)),   # 500x375 -> 842x632, offsets (top 16, left 121)
        ((375, 500), (632, 842), (16, 121)),
        ((633, 632), (633, 632), (16, 16)),    # round(16.5) == 16
        ((632, 635), (632, 635), (16, 18)),    # round(17.5) == 18
        ((300, 300), (632, 632), (16, 16)),
    ],
)
def test_hand_computed_resize_and_offsets(size, resized, box, coffee):
    image = coffee.resize(size, Image.BILINEAR)
    left, top = box
    expected = image.resize(resized, Image.BICUBIC).crop((left, top, left + 600, top + 600))
    np.testing.assert_array_equal(center_crop(image, B7), np.asarray(expected))


@pytest.mark.parametrize(("name", "fmt"), [("coffee", "JPEG"), ("astronaut", "JPEG"), ("coffee", "PNG")])
def test_real_photos_end_to_end(name, fmt, tmp_path):
    photo = Image.fromarray(getattr(skdata, name)())
    path = save(photo, tmp_path / f"{name}.{fmt.lower()}", format=fmt, quality=90)
    batch = preprocess_image(path, B7, exif_transpose=False)
    assert batch.shape == (1, 3, 600, 600) and batch.dtype == np.float32 and batch.flags.c_contiguous
    expected = checker_normalize(checker_crop(path, 600, 632), B7.mean, B7.std)
    np.testing.assert_array_equal(batch[0], expected)


# --- normalisation ------------------------------------------------------------------------------------

def test_normalize_equals_formula_bit_for_bit():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    crop[0, :3] = [[0, 0, 0], [255, 255, 255], [124, 116, 104]]  # extremes and values near the mean
    out = normalize(crop, B7)
    assert out.dtype == np.float32 and out.shape == (3, 37, 53) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, checker_normalize(crop, B7.mean, B7.std))
    assert out[0, 0, 1] == np.float32((255 - 123.675) / 58.395)


def test_normalize_uses_config_mean_and_std():
    crop = np.full((2, 2, 3), 100, dtype=np.uint8)
    config = PreprocessConfig(2, 1.0, mean=(100.0, 50.0, 0.0), std=(1.0, 2.0, 4.0))
    np.testing.assert_array_equal(normalize(crop, config)[:, 0, 0], [0.0, 25.0, 25.0])


def test_normalize_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        normalize(np.zeros((4, 4, 3), dtype=np.float32), B7)


def test_center_crop_keeps_rgb_order(tmp_path):
    image = Image.new("RGB", (50, 40), (200, 10, 30))
    crop = center_crop(image, B0)
    assert crop.shape == (224, 224, 3)
    assert (crop == [200, 10, 30]).all()


# --- decoding of modes --------------------------------------------------------------------------------

def test_grey_image(coffee, tmp_path):
    path = save(coffee.convert("L"), tmp_path / "grey.png")
    image = load_image(path)
    assert image.mode == "RGB"
    rgb = np.asarray(image)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], np.asarray(coffee.convert("L")))
    np.testing.assert_array_equal(center_crop(image, B7), checker_crop(path, 600, 632))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(coffee, tmp_path, fmt):
    palette = coffee.quantize(64)
    transparency = bytes([0] * 4 + [255] * 60) if fmt == "PNG" else 3  # byte-string tRNS vs one index
    path = save(palette, tmp_path / f"pal.{fmt.lower()}", transparency=transparency)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no Pillow warning on the way
        image = load_image(path, exif_transpose=False)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(center_crop(image, B7), checker_crop(path, 600, 632))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(coffee, tmp_path, mode):
    base = coffee if mode == "RGBA" else coffee.convert("L")
    alpha = Image.linear_gradient("L").resize(coffee.size)
    with_alpha = base.copy()
    with_alpha.putalpha(alpha)
    path = save(with_alpha, tmp_path / "alpha.png")
    image = load_image(path)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(base.convert("RGB")))
    np.testing.assert_array_equal(center_crop(image, B7), checker_crop(path, 600, 632))


def test_cmyk_jpeg(coffee, tmp_path):
    path = save(coffee.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    image = load_image(path, exif_transpose=False)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(center_crop(image, B7), checker_crop(path, 600, 632))
    # The colours survive: close to the original photo, not inverted.
    assert np.abs(np.asarray(image, np.int16) - np.asarray(coffee, np.int16)).mean() < 8


def test_16_bit_grey_is_scaled_not_clipped(coffee, tmp_path):
    grey = np.asarray(coffee.convert("L")).astype(np.uint16)
    wide = grey * 257 + (np.arange(grey.size, dtype=np.uint16).reshape(grey.shape) % 200)
    path = save(Image.fromarray(wide), tmp_path / "sixteen.png")
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
        clipped = np.asarray(raw.convert("L"))
    rgb = np.asarray(load_image(path))
    expected = np.round(wide / 257.0).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    assert (clipped == 255).mean() > 0.9  # what Pillow's own convert would have given


def test_32_bit_int_mode_is_scaled_as_16_bit():
    values = np.array([[0, 128, 257, 65535, 70000, -5]], dtype=np.int32)
    image = load_image(Image.fromarray(values))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert [image.getpixel((x, 0))[0] for x in range(6)] == [0, 0, 1, 255, 255, 0]


def test_one_bit_image(tmp_path):
    bits = np.zeros((30, 40), dtype=bool)
    bits[:, 20:] = True
    path = save(Image.fromarray(bits), tmp_path / "bits.png")
    with Image.open(path) as raw:
        assert raw.mode == "1"
    rgb = np.asarray(load_image(path))
    assert (rgb[:, :20] == 0).all() and (rgb[:, 20:] == 255).all()
    np.testing.assert_array_equal(center_crop(load_image(path), B7), checker_crop(path, 600, 632))


def test_one_pixel_image(tmp_path):
    path = save(Image.new("RGB", (1, 1), (12, 200, 99)), tmp_path / "dot.png")
    crop = center_crop(load_image(path), B7)
    assert crop.shape == (600, 600, 3) and (crop == [12, 200, 99]).all()
    np.testing.assert_array_equal(crop, checker_crop(path, 600, 632))


def test_sources_agree(coffee, tmp_path):
    path = save(coffee, tmp_path / "coffee.png")
    expected = np.asarray(coffee)
    for source in (path, str(path), path.read_bytes(), coffee, expected):
        np.testing.assert_array_equal(np.asarray(load_image(source)), expected)
    grey = np.asarray(coffee.convert("L"))
    np.testing.assert_array_equal(np.asarray(load_image(grey))[..., 1], grey)


# --- EXIF orientation ---------------------------------------------------------------------------------

def test_exif_orientation(coffee, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; rotate 90 degrees clockwise to view
    path = save(coffee, tmp_path / "rotated.jpg", exif=exif, quality=95)
    with Image.open(path) as raw:
        stored = np.asarray(raw.convert("RGB"))
    upright = load_image(path)
    untouched = load_image(path, exif_transpose=False)
    assert upright.size == (400, 600) and untouched.size == (600, 400)
    np.testing.assert_array_equal(np.asarray(upright), np.rot90(stored, k=-1))
    np.testing.assert_array_equal(np.asarray(untouched), stored)
    np.testing.assert_array_equal(
        preprocess_image(path, B7, exif_transpose=False)[0],
        checker_normalize(checker_crop(path, 600, 632), B7.mean, B7.std),
    )


# --- errors: one type, a message that names the input, Pillow's global state untouched ----------------

@pytest.fixture
def pillow_state_unchanged():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    yield
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR (with a correct CRC) claims width x height."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def expect_image_error(source, *fragments: str) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.mark.usefixtures("pillow_state_unchanged")
class TestErrors:
    def test_zero_byte_file(self, tmp_path):
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
        expect_image_error(path, str(path), "empty")

    def test_truncated_jpeg(self, coffee, tmp_path):
        whole = save(coffee, tmp_path / "whole.jpg", quality=90).read_bytes()
        path = tmp_path / "cut.jpg"
        path.write_bytes(whole[: len(whole) // 2])
        expect_image_error(path, str(path), "truncated")
        expect_image_error(whole[: len(whole) // 2], "<bytes>", "truncated")

    def test_truncated_png(self, coffee, tmp_path):
        whole = save(coffee, tmp_path / "whole.png").read_bytes()
        path = tmp_path / "cut.png"
        path.write_bytes(whole[: len(whole) // 3])
        expect_image_error(path, str(path))

    def test_text_file(self, tmp_path):
        path = tmp_path / "notes.jpg"
        path.write_text("this is not a picture\n")
        expect_image_error(path, str(path), "not an image")

    def test_missing_file(self, tmp_path):
        path = tmp_path / "nowhere.png"
        expect_image_error(path, str(path), "no such file")

    def test_directory(self, tmp_path):
        expect_image_error(tmp_path, str(tmp_path), "directory")

    def test_empty_bytes(self):
        expect_image_error(b"", "<bytes>")

    @pytest.mark.parametrize("factor", [2.0001, 2.5])  # Pillow only warns below 2x MAX_IMAGE_PIXELS, refuses above
    def test_decompression_bomb_header(self, tmp_path, factor):
        side = int((Image.MAX_IMAGE_PIXELS * factor) ** 0.5) + 1
        path = tmp_path / "bomb.png"
        path.write_bytes(png_claiming_size(side, side))
        expect_image_error(path, str(path), "decompression bomb")
        assert Image.MAX_IMAGE_PIXELS == 89478485  # the limit stayed on

    def test_header_between_pillows_warning_and_refusal_is_no_bomb(self, tmp_path):
        """1.2x MAX_IMAGE_PIXELS (107 MP) is a photo size: only Pillow's warning level, so it is decoded
        (and this file, whose data is 8x8 pixels, then fails as what it is: incomplete)."""
        side = int((Image.MAX_IMAGE_PIXELS * 1.2) ** 0.5)
        message = expect_image_error(png_claiming_size(side, side), "<bytes>")
        assert "decompression bomb" not in message

    def test_max_pixels_refuses_from_the_header_before_decoding(self, tmp_path):
        # The file's pixel data is 8x8: only the header can have triggered the refusal.
        path = tmp_path / "claims-60mp.png"
        path.write_bytes(png_claiming_size(10_000, 6_000))
        with pytest.raises(ImageError) as info:
            load_image(path, max_pixels=50_000_000)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        assert "10000x6000 is 60,000,000 pixels, over the limit of 50,000,000" in message
        assert "before decoding" in message and "max_pixels=60000000" in message
        assert "--max-pixels 60000000" in render(info.value)  # as the command line says it

    def test_bomb_from_test_helpers_is_refused_before_decoding(self, tmp_path):
        try:  # the shared bad-file makers (moving from badfiles.py into helpers.py)
            from helpers import png_bomb
        except ImportError:
            from badfiles import png_bomb
        path = png_bomb(tmp_path / "bomb.png")
        for limit in (None, 50_000_000, 10 ** 12):  # above Pillow's own threshold Pillow still refuses
            with pytest.raises(ImageError, match="decompression bomb"):
                load_image(path, max_pixels=limit)

    def test_decompression_bomb_real_image(self, tmp_path):
        side = int((Image.MAX_IMAGE_PIXELS * 2) ** 0.5) + 100  # a blank 1-bit PNG: cheap to make, tiny on disk
        path = save(Image.new("1", (side, side)), tmp_path / "big.png")
        assert path.stat().st_size < 100_000
        expect_image_error(path, str(path), "decompression bomb")

    def test_limit_holds_whatever_the_warning_filters_say(self, tmp_path):
        side = int((Image.MAX_IMAGE_PIXELS * 1.2) ** 0.5)
        for action in ("ignore", "error"):
            with warnings.catch_warnings():
                warnings.simplefilter(action)
                with pytest.raises(ImageError, match="over the limit of 50,000,000"):
                    load_image(png_claiming_size(side, side), max_pixels=50_000_000)

    @pytest.mark.parametrize(
        ("array", "fragment"),
        [
            (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
            (np.zeros((4, 4, 4), dtype=np.uint8), "shape"),
            (np.zeros((4,), dtype=np.uint8), "shape"),
            (np.zeros((0, 4, 3), dtype=np.uint8), "no pixels"),
        ],
    )
    def test_bad_arrays(self, array, fragment):
        expect_image_error(array, "<array>", fragment)


# --- big photos: 100-megapixel cameras are not decompression bombs -----------------------------------

@pytest.fixture(scope="module")
def photo_102mp(tmp_path_factory) -> Path:
    """A real photo the size of a medium-format camera's, 12000x8500 = 102 MP (over Pillow's 89.5 MP
    warning level, under its 179 MP refusal): scikit-image's coffee, upscaled, saved as JPEG."""
    path = tmp_path_factory.mktemp("big") / "medium-format.jpg"
    big = Image.fromarray(skdata.coffee()).resize((12000, 8500), Image.Resampling.BILINEAR)
    big.save(path, quality=85)
    del big
    return path


@pytest.mark.usefixtures("pillow_state_unchanged")
def test_102_megapixel_photo_decodes_by_default(photo_102mp):
    image = load_image(photo_102mp)
    assert image.size == (12000, 8500) and Image.MAX_IMAGE_PIXELS < 12000 * 8500
    crop = center_crop(image, B7)
    assert crop.shape == (600, 600, 3)
    # The same picture as the photo at a tenth of the size, give or take JPEG and the resampling.
    small = center_crop(Image.fromarray(skdata.coffee()).resize((1200, 850), Image.Resampling.BILINEAR), B7)
    small = small.astype(np.int16)
    assert np.abs(crop.astype(np.int16) - small).mean() < 6


@pytest.mark.usefixtures("pillow_state_unchanged")
def test_102_megapixel_photo_over_a_lower_max_pixels_is_refused_saying_how_to_allow_it(photo_102mp):
    with pytest.raises(ImageError) as info:
        load_image(photo_102mp, max_pixels=50_000_000)
    message = str(info.value)
    assert "\n" not in message and str(photo_102mp) in message
    assert "102,000,000 pixels, over the limit of 50,000,000" in message and "max_pixels=102000000" in message
    assert "--max-pixels 102000000" in render(info.value)
    assert load_image(photo_102mp, max_pixels=102_000_000).size == (12000, 8500)  # the limit is inclusive


def test_classifier_passes_max_pixels_to_decoding(photo_102mp):
    from effnet.classifier import Classifier

    strict = Classifier("efficientnet_b0", None, backend="torch", max_pixels=50_000_000)
    (outcome,) = strict.classify_iter([photo_102mp])
    assert outcome.predictions is None and "--max-pixels 102000000" in render(outcome.failure)
    (outcome,) = Classifier("efficientnet_b0", None, backend="torch").classify_iter([photo_102mp])
    assert outcome.error is None and len(outcome.predictions) == 5
