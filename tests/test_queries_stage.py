"""The queries stage and CLI: files, URLs on a loopback server, CSV/JSONL listings; table, store, quarantine."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

skimage_data = pytest.importorskip("skimage.data")

from http_fixtures import LoopbackServer

from visprep.cli import app
from visprep.queries import NsfwClassifier, NsfwVerdict, QueryCleaner, SaliencyDetector
from visprep.queries.inputs import expand_sources
from visprep.queries.stage import queries_stage
from visprep.queries.superres import ClassicalUpscaler
from visprep.workspace import Workspace


def _jpeg(rgb: np.ndarray, orientation: int = 1) -> bytes:
    image = Image.fromarray(rgb)
    if orientation == 6:
        image = image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


class _FlagsCats(NsfwClassifier):
    """Test double: 'unsafe' when the photo is wider than tall (the cat photo is, the astronaut is not)."""

    name = "flags-wide"

    def _classify(self, rgb):
        wide = rgb.shape[1] > rgb.shape[0] * 1.3
        return NsfwVerdict(wide, 0.9 if wide else 0.0, ["TEST_LABEL"] if wide else [])


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "cat.jpg").write_bytes(_jpeg(skimage_data.chelsea()))
    (d / "astronaut_rot.jpg").write_bytes(_jpeg(skimage_data.astronaut(), orientation=6))
    (d / "blurred.jpg").write_bytes(_jpeg(cv2.GaussianBlur(skimage_data.coffee(), (0, 0), 6)))
    (d / "tiny.png").write_bytes(_png(cv2.resize(skimage_data.chelsea(), (15, 10), interpolation=cv2.INTER_AREA)))
    return d


def _png(rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def test_stage_records_every_input_and_quarantines_rejections(tmp_path, photos):
    ws = Workspace(tmp_path / "ws")
    listing = tmp_path / "list.csv"
    listing.write_text("source,user\nin/blurred.jpg,u1\nin/tiny.png,u2\nin/missing.jpg,u3\n")
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"url": str(photos / "astronaut_rot.jpg")}) + "\n")
    cleaner = QueryCleaner(detector=SaliencyDetector(), nsfw=_FlagsCats(), upscaler=ClassicalUpscaler())
    with LoopbackServer(images=[_jpeg(skimage_data.astronaut())]) as server:
        url = server.url("/image/0")
        ws.root.mkdir(parents=True)
        (ws.root / "visprep.toml").write_text("[fetch]\nallow_loopback = true\n")
        res = queries_stage(ws, [str(photos / "cat.jpg"), str(listing), str(jsonl), url], cleaner=cleaner)
    assert (res.inputs, res.accepted, res.rejected) == (6, 2, 4)
    assert res.by_reason == {"nsfw": 1, "blurred": 1, "too_small": 1, "fetch_not_found": 1}
    rows = {r["source"]: r for r in ws.read_table("queries").to_pylist()}
    assert len(rows) == 6
    accepted = [r for r in rows.values() if r["status"] == "accepted"]
    for r in accepted:
        data = ws.store.get(r["image_id"], "jpg")
        decoded = np.asarray(Image.open(io.BytesIO(data)))
        assert decoded.shape == (r["height"], r["width"], 3)
        steps = json.loads(r["steps"])
        assert [s["step"] for s in steps] == ["orientation", "crop", "blur", "resolution", "nsfw"]
    rotated = rows[str(photos / "astronaut_rot.jpg")]
    assert json.loads(rotated["steps"])[0]["exif_orientation"] == 6
    assert rotated["listing"] == str(jsonl) and rotated["line"] == 1
    blurred = rows[str((photos / "blurred.jpg").resolve())]
    assert blurred["reason"] == "blurred" and blurred["image_id"] is None and blurred["line"] == 2
    # Rejected photos are never in the store: only the two accepted images are.
    stored = sorted(p.name for p in (ws.root / "images").rglob("*.jpg"))
    assert stored == sorted(f"{r['image_id']}.jpg" for r in accepted)
    q = ws.read_table("quarantine").to_pylist()
    assert sorted(r["reason"] for r in q) == ["blurred", "fetch_not_found", "nsfw", "too_small"]
    assert all(r["stage"] == "queries" for r in q)
    run = ws.last_run("queries")
    assert run["counts"]["accepted"] == 2 and run["params"]["resolved"]["nsfw"] == {"name": "flags-wide"}

    # Running again with one source replaces that row only and keeps the others.
    queries_stage(ws, [str(photos / "cat.jpg")], cleaner=cleaner)
    assert ws.read_table("queries").num_rows == 6


def test_listing_without_a_photo_column_names_the_valid_ones(tmp_path):
    listing = tmp_path / "bad.csv"
    listing.write_text("name\nx\n")
    with pytest.raises(ValueError, match="source, url, path"):
        expand_sources([listing])


def test_cli_queries_with_the_default_offline_plugins(tmp_path, photos):
    runner = CliRunner()
    ws = tmp_path / "ws"
    result = runner.invoke(app, ["queries", "-w", str(ws), str(photos / "cat.jpg"), str(photos / "blurred.jpg")])
    assert result.exit_code == 0, result.output
    assert "accepted 1, rejected 1" in result.output
    table = Workspace(ws).read_table("queries").to_pylist()
    cat = next(r for r in table if r["source"].endswith("cat.jpg"))
    nsfw_step = json.loads(cat["steps"])[-1]
    assert nsfw_step["classifier"] == "nudenet" and nsfw_step["decision"] == "passed"


def test_cli_calibrate_blur(tmp_path):
    sharp, blurred = tmp_path / "s", tmp_path / "b"
    sharp.mkdir()
    blurred.mkdir()
    for i, rgb in enumerate([skimage_data.astronaut(), skimage_data.coffee(), skimage_data.rocket()]):
        (sharp / f"{i}.jpg").write_bytes(_jpeg(rgb))
        (blurred / f"{i}.jpg").write_bytes(_jpeg(cv2.GaussianBlur(rgb, (0, 0), 5)))
    result = CliRunner().invoke(app, ["queries-calibrate-blur", "--sharp", str(sharp), "--blurred", str(blurred),
                                      "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert "blur_threshold =" in result.output
    assert Workspace(tmp_path / "ws").last_run("queries-calibrate-blur") is not None
