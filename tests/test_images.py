"""course_lib.images: the idx reader, the Fashion-MNIST sources (Debian package, cache, fetch, digits
stand-in) and the tensor transforms."""

import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch

from course_lib import images as I

DEBIAN = pytest.mark.skipif(not all((I.DEBIAN_DIR / n).is_file() for n in I.FILES),
                            reason=f"Debian's dataset-fashion-mnist is not installed in {I.DEBIAN_DIR}")


def _idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 28, 28), (0, 3)])
@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_round_trip(tmp_path, shape, gzipped):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if gzipped else "x.idx")
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    got = I.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, array)


def test_read_idx_refuses_bad_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.idx"
    path.write_bytes(_idx_bytes(array, type_byte=0x0D))  # 0x0D: float32
    with pytest.raises(ValueError, match="not a uint8 idx file"):
        I.read_idx(path)
    path.write_bytes(b"\x1f\x8b\x08\x00" + _idx_bytes(array)[4:])  # a gzip header in a file without .gz
    with pytest.raises(ValueError, match="not a uint8 idx file"):
        I.read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="not a uint8 idx file"):
        I.read_idx(path)
    path.write_bytes(_idx_bytes(array)[:-5])  # truncated
    with pytest.raises(ValueError, match=r"header says \(2, 3, 4\)"):
        I.read_idx(path)
    path.write_bytes(_idx_bytes(array) + b"\x00")  # trailing bytes
    with pytest.raises(ValueError, match="header says"):
        I.read_idx(path)
    gz = tmp_path / "x.idx.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(array)[:-1]))
    with pytest.raises(ValueError, match="header says"):
        I.read_idx(gz)


@pytest.fixture(scope="module")
def debian_set():
    return I.load_fashion_mnist(source="debian")


@DEBIAN
def test_debian_fashion_mnist(debian_set):
    data = debian_set
    assert "Debian" in data.source and data.note == ""
    assert data.classes == I.FASHION_CLASSES and len(data.classes) == 10
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_images.dtype == data.test_images.dtype == torch.uint8
    assert data.train_labels.dtype == data.test_labels.dtype == torch.int64
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    # the published training-set statistics that to_inputs standardises with
    pixels = data.train_images.float() / 255
    assert abs(pixels.mean().item() - I.MEAN) < 1e-3 and abs(pixels.std().item() - I.STD) < 1e-3
    assert "60,000 train and 10,000 test images, 28×28, 10 classes" in str(data)


@pytest.mark.parametrize("load", [lambda: I.load_fashion_mnist(source="digits"), I.digits_as_fashion])
def test_digits_stand_in(load):
    data = load()
    assert data.train_images.dtype == data.test_images.dtype == torch.uint8
    assert data.train_images.shape[1:] == data.test_images.shape[1:] == (28, 28)
    assert len(data.train_images) + len(data.test_images) == 1797
    assert len(data.train_images) == len(data.train_labels) == int(0.8 * 1797)
    assert set(data.train_labels.tolist()) == set(range(10)) and data.train_labels.dtype == torch.int64
    assert data.note and "digits" in data.source and data.classes == tuple("0123456789")
    assert data.train_images.max() == 255 and data.train_images.min() == 0
    assert data.note in str(data)


def test_digits_split_is_seeded():
    a, b, c = I.digits_as_fashion(seed=0), I.digits_as_fashion(seed=0), I.digits_as_fashion(seed=1, size=16)
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.test_images, b.test_images)
    assert not torch.equal(a.train_labels, c.train_labels)
    assert c.train_images.shape[1:] == (16, 16)


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        I.load_fashion_mnist(source="cache", cache=tmp_path)
    with pytest.raises(ValueError, match="source must be one of"):
        I.load_fashion_mnist(source="kaggle")


def _copy_debian(folder):
    folder.mkdir()
    for name in I.FILES:
        shutil.copy(I.DEBIAN_DIR / name, folder / name)


@DEBIAN
def test_fetch_from_a_file_url_checks_and_caches(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    _copy_debian(mirror)
    folder = I.fetch_fashion_mnist(cache, url=mirror.as_uri() + "/")
    assert folder == cache / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(I.FILES)  # no .part files left behind
    shutil.rmtree(mirror)  # a second fetch finds the checked copies and downloads nothing
    assert I.fetch_fashion_mnist(cache, url=mirror.as_uri() + "/") == folder
    data = I.load_fashion_mnist(source="cache", cache=cache)
    assert "cached" in data.source and data.train_images.shape == (60000, 28, 28)


def test_fetch_deletes_a_file_with_the_wrong_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(I, "FILES", {"tiny.gz": hashlib.sha256(b"the right bytes").hexdigest()})
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    (mirror / "tiny.gz").write_bytes(b"the wrong bytes")
    with pytest.raises(ValueError, match="wrong SHA-256"):
        I.fetch_fashion_mnist(cache, url=mirror.as_uri() + "/")
    assert not (cache / "fashion-mnist").exists()  # nothing kept: no file, no .part, no empty folder
    (mirror / "tiny.gz").write_bytes(b"the right bytes")
    folder = I.fetch_fashion_mnist(cache, url=mirror.as_uri() + "/")
    assert [p.name for p in folder.iterdir()] == ["tiny.gz"]
    assert (folder / "tiny.gz").read_bytes() == b"the right bytes"
    # a cached file with the wrong content is fetched again
    (folder / "tiny.gz").write_bytes(b"corrupted")
    I.fetch_fashion_mnist(cache, url=mirror.as_uri() + "/")
    assert (folder / "tiny.gz").read_bytes() == b"the right bytes"


def test_to_inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 6, 7), generator=g, dtype=torch.uint8)
    x = I.to_inputs(images)
    assert x.shape == (5, 1, 6, 7) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], (images.float() / 255 - I.MEAN) / I.STD)
    assert I.to_inputs(torch.zeros(1, 2, 2, dtype=torch.uint8))[0, 0, 0, 0].item() == pytest.approx(-I.MEAN / I.STD)
    pixels = images.float() / 255
    z = I.to_inputs(images, mean=pixels.mean().item(), std=pixels.std().item())
    assert abs(z.mean().item()) < 1e-5 and z.std().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        I.to_inputs(images.float())
    with pytest.raises(ValueError, match="uint8"):
        I.to_inputs(images[:, None])  # already (N, 1, H, W)


def test_balanced_subset():
    labels = torch.arange(4).repeat_interleave(torch.tensor([10, 7, 12, 5]))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    chosen = I.balanced_subset(labels, 5, seed=3)
    assert labels[chosen].bincount().tolist() == [5, 5, 5, 5]
    assert chosen.tolist() == sorted(set(chosen.tolist()))  # sorted, no repeats
    assert torch.equal(chosen, I.balanced_subset(labels, 5, seed=3))
    assert not torch.equal(chosen, I.balanced_subset(labels, 5, seed=4))
    assert len(I.balanced_subset(labels, 1)) == 4
    with pytest.raises(ValueError, match="class 3 has 5 examples"):
        I.balanced_subset(labels, 6)
    with pytest.raises(ValueError, match="per_class"):
        I.balanced_subset(labels, 0)


def _background_and_dot(n=2, h=7, w=9, at=(3, 4)):
    x = torch.full((n, 1, h, w), 0.25)
    x[1] = -1.0  # a different background for the second image
    x[:, 0, at[0], at[1]] = 5.0
    return x


@pytest.mark.parametrize("dx, dy", [(0, 0), (2, 1), (-3, 2), (1, -3), (-4, -3), (4, 0)])
def test_shift_moves_a_bright_pixel(dx, dy):
    x = _background_and_dot()
    out = I.shift(x, dx, dy)
    assert out.shape == x.shape
    for i, background in enumerate((0.25, -1.0)):
        assert (out[i, 0] == 5.0).nonzero().tolist() == [[3 + dy, 4 + dx]]
        assert ((out[i, 0] == background) | (out[i, 0] == 5.0)).all()


def test_shift_fills_with_each_images_corner_value():
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    out = I.shift(x, 2, 1)
    torch.testing.assert_close(out[:, :, 1:, 2:], x[:, :, :-1, :-2], atol=0, rtol=0)
    corner = x[:, :, :1, :1]
    assert (out[:, :, :1, :] == corner).all() and (out[:, :, :, :2] == corner).all()
    out = I.shift(x, -3, -2)
    torch.testing.assert_close(out[:, :, :-2, :-3], x[:, :, 2:, 3:], atol=0, rtol=0)
    assert (out[:, :, -2:, :] == corner).all() and (out[:, :, :, -3:] == corner).all()
    assert x.equal(torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(0)))  # input untouched


@pytest.mark.parametrize("dx, dy", [(9, 0), (0, 7), (-9, 0), (0, -8)])
def test_shift_refuses_to_move_the_image_out(dx, dy):
    with pytest.raises(ValueError, match="leaves nothing"):
        I.shift(_background_and_dot(), dx, dy)


def test_rotate_by_0_and_360_is_the_identity():
    x = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(I.rotate(x, 0), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(I.rotate(x, 360), x, atol=1e-5, rtol=0)


def test_rotate_by_90_is_counter_clockwise():
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 5] = 1.0  # right of the centre (3, 3)
    out = I.rotate(x, 90)
    assert (out[0, 0] > 0.5).nonzero().tolist() == [[1, 3]]  # above it
    assert (I.rotate(x, -90)[0, 0] > 0.5).nonzero().tolist() == [[5, 3]]  # below it
    assert (I.rotate(x, 180)[0, 0] > 0.5).nonzero().tolist() == [[3, 1]]
    y = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(I.rotate(y, 90), torch.rot90(y, 1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_rotate_fills_corners_with_the_background():
    x = torch.full((1, 1, 9, 9), 0.3)
    x[0, 0, 3:6, 3:6] = 1.0
    out = I.rotate(x, 45)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor(0.3), atol=1e-6, rtol=0)  # from outside the image
    torch.testing.assert_close(out[0, 0, 4, 4], torch.tensor(1.0), atol=1e-6, rtol=0)  # the centre stays


def test_add_noise():
    x = torch.linspace(-1, 1, 200_000).reshape(2, 1, 100, 1000)
    a, b, c = I.add_noise(x, 0.3, seed=1), I.add_noise(x, 0.3, seed=1), I.add_noise(x, 0.3, seed=2)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = a - x
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean().item()) < 0.01
    assert torch.equal(I.add_noise(x, 0.0), x)
    assert I.add_noise(x.double(), 0.1).dtype == torch.float64


def test_a_broken_transfer_is_an_oserror_and_leaves_nothing(tmp_path, monkeypatch):
    import http.client

    monkeypatch.setattr(I, "FILES", {"tiny.gz": hashlib.sha256(b"x").hexdigest()})

    def broken(url, timeout):
        raise http.client.IncompleteRead(b"par")

    monkeypatch.setattr(I.urllib.request, "urlopen", broken)
    with pytest.raises(OSError, match="IncompleteRead"):
        I.fetch_fashion_mnist(tmp_path)
    assert not (tmp_path / "fashion-mnist").exists()


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 4), torch.zeros(1, 1, 4, 4, dtype=torch.uint8), [1.0]])
def test_transforms_refuse_what_is_not_a_float_batch(bad):
    for transform in (lambda x: I.shift(x, 1, 0), lambda x: I.rotate(x, 5), lambda x: I.add_noise(x, 0.1)):
        with pytest.raises(ValueError, match=r"x must be a float \(N, C, H, W\) tensor"):
            transform(bad)
