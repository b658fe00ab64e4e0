"""read_image on PNG/JPEG 8/16-bit, RGBA/CMYK, DICOM (MONOCHROME1/2, rescale, window, no pixels), NIfTI, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsd.data.images import UnreadableImage, read_image


def ramp(h: int = 32, w: int = 40, top: int = 4000) -> np.ndarray:
    return np.tile(np.linspace(0, top, w), (h, 1)).astype(np.uint16)


def test_png_8_and_16_bit(tmp_path, xray_like, write_png):
    a8 = read_image(write_png(tmp_path / "a.png", xray_like(bits=8)))
    assert a8.dtype == np.float32 and a8.shape == (96, 80) and a8[0, 0] == 0 and 0.2 < a8.max() <= 1
    raw16 = xray_like(bits=16)
    a16 = read_image(write_png(tmp_path / "b.png", raw16))
    assert a16.shape == (96, 80) and a16.max() == pytest.approx(1.0) and a16[0, 0] == 0
    np.testing.assert_allclose(a16, raw16 / raw16.max(), atol=1e-6)
    jpg = tmp_path / "c.jpg"
    Image.fromarray(xray_like()).save(jpg, quality=95)
    assert read_image(jpg).shape == (96, 80)


def test_rgba_cmyk_palette_are_converted(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :10, 3] = 255  # left half opaque red, right half transparent → black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (20, 20, 3) and out[0, 0, 0] == pytest.approx(200 / 255) and out[0, 15].max() == 0
    Image.new("CMYK", (20, 20), (0, 0, 0, 128)).save(tmp_path / "cmyk.jpg")
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.ndim == 2 and 0.4 < cmyk.mean() < 0.6  # 50% black ink → mid grey, stored grey as one channel
    Image.new("P", (20, 20), 3).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape[:2] == (20, 20)


def test_bad_files_raise_unreadable(tmp_path, write_png):
    cases = {
        "missing": tmp_path / "nope.png",
        "corrupt": tmp_path / "corrupt.png",
        "tiny": write_png(tmp_path / "tiny.png", np.zeros((1, 1), dtype=np.uint8)),
        "giant": write_png(tmp_path / "giant.png", np.zeros((300, 400), dtype=np.uint8)),
    }
    cases["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    reasons = {}
    for name, path in cases.items():
        with pytest.raises(UnreadableImage) as info:
            read_image(path, min_size=16, max_pixels=100_000)
        reasons[name] = info.value.reason
        assert info.value.path == str(path)
    assert reasons["missing"] == "file not found"
    assert "smaller than min_size 16" in reasons["tiny"] and "more than max_pixels" in reasons["giant"]


def test_dicom_monochrome_rescale_window(tmp_path, write_dicom):
    pixels = ramp()
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", pixels))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert m2[0, 0] == 0 and m2[0, -1] == pytest.approx(1)
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-6)  # MONOCHROME1 inverted so air is black in both
    # slope/intercept → Hounsfield-like units, then a window (centre 1000, width 1000) from the file header
    win = read_image(write_dicom(tmp_path / "w.dcm", pixels, slope=0.5, intercept=0, window=(1000, 1000)))
    hu = pixels * 0.5
    assert win[0, 0] == 0 and win[0, -1] == pytest.approx(1)  # 0 HU below the window, 2000 HU above it
    inside = (hu > 600) & (hu < 1400)
    np.testing.assert_allclose(win[inside], (hu[inside] - 500) / 1000, atol=0.01)
    # a dim image inside a wide window stays dim (no min-max stretch after windowing)
    dim = read_image(write_dicom(tmp_path / "d.dcm", ramp(top=1000), window=(2000, 4000)))
    assert dim.max() == pytest.approx(0.25, abs=1e-3)
    # an explicit window overrides the file's and DICOM without a suffix is recognised by its magic bytes
    nosuffix = write_dicom(tmp_path / "IM0001", pixels)
    over = read_image(nosuffix, window=(1000, 2000))
    np.testing.assert_allclose(over[0, :], np.clip(pixels[0] / 2000, 0, 1), atol=1e-5)


def test_dicom_without_pixel_data(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "empty.dcm", ramp(), with_pixels=False)
    with pytest.raises(UnreadableImage, match="no pixel data"):
        read_image(path)


def test_nifti_slice_and_packed_mri_channels(tmp_path, write_png):
    import nibabel as nib

    vol = np.zeros((24, 20, 9), dtype=np.float32)
    for k in range(9):
        vol[4:20, 4:16, k] = k + 1  # slice k holds intensity k + 1 inside a box
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "t2.nii.gz")
    mid = read_image(tmp_path / "t2.nii.gz")
    assert mid.shape == (20, 24)  # rotated for display: (y, x) → rows = y
    assert mid.max() == pytest.approx(1) and mid.min() == 0
    with pytest.raises(UnreadableImage, match="slice 12 out of range: axis 2 has 9 slices"):
        read_image(tmp_path / "t2.nii.gz", slice_index=12)
    write_png(tmp_path / "adc.png", (np.ones((10, 12)) * 128).astype(np.uint8))
    packed = read_image([tmp_path / "t2.nii.gz", tmp_path / "adc.png", tmp_path / "adc.png"], slice_index=3)
    assert packed.shape == (20, 24, 3)  # ADC resized to the T2W slice
    assert packed[..., 1].mean() == pytest.approx(128 / 255, abs=1e-3)
