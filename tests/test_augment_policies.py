"""Augmentation policies: reproducible under a seed, every parameter configurable, geometric ones refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kornia")
skimage_data = pytest.importorskip("skimage.data")

from typer.testing import CliRunner

from visprep.augment import (
    POLICIES,
    GeometricAugmentationError,
    KorniaPolicy,
    build_torchvision_pipeline,
    preview_grid,
    refuse_geometric,
    resolve_policy,
)
from visprep.cli import app
from visprep.config import AugmentConfig


@pytest.fixture(scope="module")
def batch():
    imgs = [skimage_data.astronaut()[:, :, :3], skimage_data.chelsea()[:300, :300], skimage_data.coffee()[:, :400]]
    import cv2

    imgs = [cv2.resize(i, (160, 160)) for i in imgs]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_is_reproducible_under_a_seed(batch, name):
    policy = KorniaPolicy(resolve_policy(name, size=96))
    a = policy(batch, seed=7)
    b = policy(batch, seed=7)
    c = policy(batch, seed=8)
    assert a.shape == (3, 3, 96, 96) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the caller's RNG is left alone
    torch.manual_seed(1)
    x = torch.rand(1)
    torch.manual_seed(1)
    policy(batch, seed=3)
    assert torch.equal(torch.rand(1), x)


def test_clip_light_is_lighter_than_full(batch):
    full, light = POLICIES["full"], POLICIES["clip-light"]
    assert light.crop_scale[0] >= 0.9 and light.erasing_p == light.blur_p == light.grayscale_p == 0
    assert full.erasing_p > 0 and full.blur_p > 0 and full.cutmix_p == full.mixup_p == 0
    # CLIP-light output stays close to the (resized) input; full moves much further on average
    ref = torch.nn.functional.interpolate(batch.float() / 255, size=(96, 96), mode="bilinear", antialias=True)
    d_light = (KorniaPolicy(resolve_policy("clip-light", {"flip_p": 0.0}, size=96))(batch, seed=0) - ref).abs().mean()
    d_full = (KorniaPolicy(resolve_policy("full", {"flip_p": 0.0}, size=96))(batch, seed=0) - ref).abs().mean()
    assert d_light < d_full


@pytest.mark.parametrize("override", [{"rotation": 15}, {"shear": 0.2}, {"perspective": 0.3}, {"degrees": 10}])
def test_geometric_overrides_are_refused(override):
    with pytest.raises(GeometricAugmentationError, match="canonical orientations"):
        resolve_policy("full", override)


def test_geometric_transforms_in_a_pipeline_are_refused():
    import kornia.augmentation as K

    with pytest.raises(GeometricAugmentationError, match="RandomRotation"):
        refuse_geometric(torch.nn.Sequential(K.RandomHorizontalFlip(), K.RandomRotation(15.0)))
    with pytest.raises(GeometricAugmentationError, match="RandomAffine"):
        refuse_geometric([K.RandomAffine(degrees=0, shear=10.0)])
    refuse_geometric(torch.nn.Sequential(K.RandomHorizontalFlip()))


def test_parameters_are_validated_and_listed():
    with pytest.raises(ValueError, match="clip-light, full"):
        resolve_policy("heavy")
    with pytest.raises(ValueError, match="valid: blur_kernel"):
        resolve_policy("full", {"jiter_p": 0.5})
    with pytest.raises(ValueError, match="crop_scale"):
        resolve_policy("full", {"crop_scale": [0.9, 0.5]})
    p = resolve_policy("full", {"crop_scale": [0.5, 1.0], "erasing_p": 0.0}, size=128)
    assert p.crop_scale == (0.5, 1.0) and p.size == 128 and p.to_dict()["crop_scale"] == [0.5, 1.0]
    AugmentConfig(params={"erasing_p": 0.1})  # the config carries overrides; resolve_policy validates them


def test_cutmix_mixup_are_opt_in(batch):
    off = KorniaPolicy(resolve_policy("full", size=64))
    with pytest.raises(ValueError, match="off in this policy"):
        off.mix(off(batch, seed=0), torch.tensor([0, 1, 2]))
    on = KorniaPolicy(resolve_policy("full", {"mixup_p": 1.0}, size=64))
    images, labels = on.mix(on(batch, seed=0), torch.tensor([0, 1, 2]), seed=0)
    assert images.shape == (3, 3, 64, 64) and len(labels) == 1


def test_torchvision_pipeline_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        build_torchvision_pipeline(POLICIES["full"])


def test_preview_grid_and_cli(tmp_path):
    rgb = skimage_data.chelsea()
    grid = preview_grid(rgb, resolve_policy("clip-light", size=64), n=6, seed=1, cols=3, gap=2)
    assert grid.shape == (2 * 64 + 2, 3 * 64 + 4, 3)
    assert np.array_equal(grid, preview_grid(rgb, resolve_policy("clip-light", size=64), n=6, seed=1, cols=3, gap=2))
    image = tmp_path / "cat.png"
    from PIL import Image

    Image.fromarray(rgb).save(image)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "visprep.toml").write_text("[augment]\npolicy = \"full\"\nimage_size = 48\nparams = { erasing_p = 0.5 }\n")
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["augment-preview", str(image), "-o", str(out), "-w", str(ws), "-n", "4"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (2 * 48 + 4, 2 * 48 + 4)
    from visprep.workspace import Workspace

    run = Workspace(ws).last_run("augment-preview")
    assert run["params"]["params"]["erasing_p"] == 0.5 and run["params"]["params"]["size"] == 48
    (ws / "visprep.toml").write_text("[augment]\nparams = { rotation = 10 }\n")
    result = CliRunner().invoke(app, ["augment-preview", str(image), "-o", str(out), "-w", str(ws)])
    assert result.exit_code == 1 and "canonical" in result.output and "refused" in result.output
