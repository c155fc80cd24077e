"""Image files and the atomic writer: which files are opened (formats, size budget, frames, folders,
pipes), how outputs are checked and written (extension, transparency, modes, no leftovers)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from cradle2cane.files import images as I
from cradle2cane.files.atomic import atomic_path, check_output, same_file


def _rgb(h=32, w=48):
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"),
                                         (".tif", "TIFF"), (".gif", "GIF")])
def test_the_listed_formats_are_read(tmp_path, suffix, fmt):
    path = tmp_path / f"a{suffix}"
    Image.fromarray(_rgb()).save(path, format=fmt)
    rgb, alpha = I.load_image(path)
    assert rgb.shape == (32, 48, 3) and alpha is None


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA"])
def test_other_formats_are_refused_even_with_an_image_extension(tmp_path, fmt):
    path = tmp_path / "disguised.png"
    Image.fromarray(_rgb()).save(path, format=fmt)
    with pytest.raises(I.ImageFileError, match="not a PNG, JPEG, WebP, BMP, TIFF or GIF file"):
        I.load_image(path)


def test_pixel_budget_refuses_a_decompression_bomb_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("1", (12_000, 9_000)).save(path)  # 108 MP, a few kB on disk
    assert path.stat().st_size < 100_000
    with pytest.raises(I.ImageFileError, match=r"12000x9000 = 108 megapixels, more than the 100 MP"):
        I.load_image(path)


def test_multi_frame_input_says_which_frame_is_used(tmp_path, caplog):
    path = tmp_path / "anim.gif"
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (10, 120, 240)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING):
        rgb, _ = I.load_image(path)
    assert "anim.gif has 3 frames; using the first" in caplog.text
    assert abs(int(rgb.mean()) - 10) <= 2


def test_folders_and_pipes_get_a_precise_message(tmp_path):
    with pytest.raises(I.ImageFileError, match="is a folder, not an image file"):
        I.load_image(tmp_path)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(I.ImageFileError, match="is a pipe, not an image file"):
        I.load_image(fifo)  # never opened: opening a pipe would wait for a writer
    with pytest.raises(FileNotFoundError, match="image file not found"):
        I.load_image(tmp_path / "missing.png")


def test_output_extension_and_transparency(tmp_path):
    assert I.output_format(tmp_path / "a.JPG") == "JPEG"
    with pytest.raises(I.ImageFileError, match="unknown image extension '.eps'"):
        I.output_format(tmp_path / "a.eps")
    with pytest.raises(I.ImageFileError, match="no extension"):
        I.output_format(tmp_path / "a")
    with pytest.raises(I.ImageFileError, match="transparency, which .jpg cannot store"):
        I.save_image_atomic(np.zeros((8, 8, 4), np.uint8), tmp_path / "a.jpg")
    I.save_image_atomic(np.zeros((8, 8, 4), np.uint8), tmp_path / "a.webp")
    assert Image.open(tmp_path / "a.webp").mode == "RGBA"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.webp"]


def test_save_refuses_an_existing_file_without_overwrite(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        I.save_image_atomic(_rgb(), path, overwrite=False)
    assert path.read_bytes() == b"keep" and len(list(tmp_path.iterdir())) == 1
    I.save_image_atomic(_rgb(), path, overwrite=True)
    assert Image.open(path).size == (48, 32)


def test_check_output(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="is the input file"):
        check_output(tmp_path / "." / ".." / tmp_path.name / "in.png", overwrite=True, inputs=[source])
    with pytest.raises(IsADirectoryError):
        check_output(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output(blocker / "out.png")
    assert check_output(tmp_path / "new" / "deeper" / "out.png") == tmp_path / "new" / "deeper" / "out.png"
    assert same_file(source, tmp_path / "." / "in.png") and not same_file(source, tmp_path / "nothing")


def test_a_failing_writer_leaves_nothing_and_the_folder_mode_is_the_usual_one(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "folder", directory=True) as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750
