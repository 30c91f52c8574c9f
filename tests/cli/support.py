"""What the Python end-to-end tests share (standard library only)."""
import gzip
import os
import struct
import sys
import zlib


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def png_grey(pixels, width, height, channels=1):
    """A minimal 8-bit greyscale (channels 1) or RGB (channels 3, interleaved) PNG."""
    row = width * channels
    raw = b"".join(b"\0" + pixels[y * row:(y + 1) * row] for y in range(height))
    colour_type = 0 if channels == 1 else 2

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_images(directory, count):
    """The first `count` Fashion-MNIST test images as (28x28 bytes, label)."""
    with gzip.open(os.path.join(directory, "t10k-images-idx3-ubyte.gz")) as f:
        images = f.read()
    with gzip.open(os.path.join(directory, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = f.read()
    return [(images[16 + i * 784:16 + (i + 1) * 784], labels[8 + i]) for i in range(count)]
