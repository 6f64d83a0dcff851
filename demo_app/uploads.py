"""Uploads of the kiosk API: the error answered as JSON and reading a photo with its limits."""

from __future__ import annotations

from fastapi import UploadFile

_SIGNATURES = (  # the encoded formats sdk.preprocess.decode_image reads
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)  # fmt: skip


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def too_large(size: int, limit: int) -> str:
    return f"the upload is {size:,} bytes, over this server's limit of {limit:,}; send a smaller or resized photo"


def read_upload(image: UploadFile, limit: int) -> bytes:
    """The uploaded bytes, refused when empty (400), too large (413) or not an image format (415).

    Raises:
        ApiError: as above, with a message naming the problem and the fix.
    """
    data = image.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, too_large(len(data), limit).replace("is ", "is over ", 1))
    if not data:
        raise ApiError(400, f"the uploaded file {image.filename!r} is empty; send a JPEG or PNG photo")
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not is_webp and not any(data.startswith(sig) for sig, _ in _SIGNATURES):
        raise ApiError(
            415,
            f"the uploaded file {image.filename!r} (sent as {image.content_type or 'no type'}) is not a "
            "JPEG, PNG, WebP, GIF, BMP or TIFF image; send a photo",
        )
    return data
