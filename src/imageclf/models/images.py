"""Decode any image Pillow reads into the uint8 RGB tensor a model expects.

Done in the API process (Pillow only, no TensorFlow) so workers receive 150 KB of
ready pixels instead of decoding themselves; benchmarks and tests call the same
function so their reference inference sees exactly the service's pixels.
"""

from __future__ import annotations

import io
import math
import warnings
from contextlib import nullcontext

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imageclf.models.decode_budget import DecodeBudget

# Truncated files must fail loudly, never be padded with grey and classified.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# Signatures of formats Pillow reads: a file that starts like one but fails to open is corrupt, not foreign.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


class ImageDecodeError(ValueError):
    """The upload cannot be turned into pixels; `reason` says which client mistake it was."""

    UNSUPPORTED = "unsupported"
    CORRUPT = "corrupt"
    TOO_LARGE = "too_large"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode: alpha composited on white, 16/32-bit scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # convert("L") would clip a 16-bit range to white; scale to 8 bits first.
        lo, hi = img.getextrema()  # a single band: (low, high)
        assert isinstance(lo, (int, float)) and isinstance(hi, (int, float))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = img.convert("F").point(lambda v: (v - lo) * scale).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


#: How an image is brought to the model's input size (a model's config.json `resize`).
RESIZE_MODES = ("squash", "center_crop")


def target_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from a square side or a (height, width) pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def covering_size(width: int, height: int, target: tuple[int, int], resize: str) -> tuple[int, int]:
    """(width, height) to scale an image to before cutting out the model's input.

    "squash" scales straight to the input (Keras' `load_img(target_size=...)`); "center_crop"
    keeps the aspect ratio and scales so the input's height and width are both covered,
    then the centre is cut out (torchvision's Resize + CenterCrop).
    """
    th, tw = target
    if resize == "squash":
        return tw, th
    scale = max(th / height, tw / width)
    return max(tw, round(width * scale)), max(th, round(height * scale))


#: A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps each side at least this share of
#: the size it is resized to. libjpeg's scaled IDCT already averages, and the resize after a 1/4-scale
#: decode of a 1024x768 photo (256x192 → 224x224) costs a quarter of the one after a 1/2-scale decode
#: (0.3 ms instead of 1.2). At 0.85 no shared photo changes its top-1 label with MobileNet, squashed or
#: centre-cropped; at 0.75 one low-confidence photo did.
_DRAFT_SHARE = 0.85


#: Modes Pillow can box-reduce (Image.reduce); it keeps them at up to 4 bytes a pixel.
_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F", "PA"})


def decoded_bytes(img: Image.Image) -> int:
    """Most memory decoding `img` (at its current, maybe drafted, size) and converting it can hold.

    4 bytes a pixel for the modes reduced before any conversion; palette, 1-bit and 16-bit
    images are converted at full size first, holding a few copies at once.
    """
    return img.width * img.height * (4 if img.mode in _REDUCIBLE else 12)


def _reduced(img: Image.Image, cover: tuple[int, int]) -> Image.Image:
    """A huge image box-averaged down to at least twice what it is resized to next, before any conversion.

    Images under 4× the input size on a side are left alone, so photos are resized as before.
    """
    w, h = cover
    factor = int(min(img.width / w, img.height / h, img.width / h, img.height / w) // 2)
    return img.reduce(factor) if factor >= 2 and img.mode in _REDUCIBLE else img


def decode_to_pixels(data: bytes, size: int | tuple[int, int], max_pixels: int, resize: str = "squash",
                     budget: DecodeBudget | None = None, wait_s: float | None = None) -> bytes:
    """H×W×3 uint8 RGB bytes (row-major HWC) from an encoded image; `size` is a side or (H, W).

    JPEGs are decoded at reduced scale (Pillow draft mode) when that still leaves at
    least the input's size: 3-6× faster on photos, same top-1 labels; other huge images
    are box-reduced right after decoding. EXIF rotation is applied; animated images use
    their first frame. `resize` is one of RESIZE_MODES. The decode holds its decoded size
    from `budget` (DecodeBusy after `wait_s` without room). Raises ImageDecodeError for
    anything that is not a readable image of at most `max_pixels` pixels.
    """
    height, width = target_size(size)
    if not data:
        raise ImageDecodeError(ImageDecodeError.CORRUPT, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(
                    ImageDecodeError.TOO_LARGE,
                    f"image is {img.width}x{img.height} pixels; the limit is {max_pixels} pixels",
                )
            cover = covering_size(img.width, img.height, (height, width), resize)
            if img.format == "JPEG":
                # EXIF rotation may swap the sides: ask for enough pixels either way.
                side = math.ceil(max(cover) * _DRAFT_SHARE)
                img.draft("RGB", (side, side))
            with budget.hold(decoded_bytes(img), wait_s) if budget else nullcontext():
                img.load()
                img = _reduced(img, cover)
                ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to rotate
                img = _to_rgb(img)
                if resize == "center_crop":
                    img = ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)
                else:
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                return img.tobytes()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        if _looks_like_image(data):
            raise ImageDecodeError(ImageDecodeError.CORRUPT, "the image is truncated or corrupt") from None
        raise ImageDecodeError(
            ImageDecodeError.UNSUPPORTED, "the uploaded file is not an image format this service reads"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(ImageDecodeError.TOO_LARGE, f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(
            ImageDecodeError.CORRUPT, f"the image is truncated or corrupt ({exc})"
        ) from None
