"""run_over / read_results in one process: equality with attribute loops, the manifest, resuming,
refusing a different run, unreadable images, the open format, bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from dnnbrain_captum import (
    GuidedSaliencyImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
    digits_cnn,
    digits_images,
    read_results,
    run_over,
)
from dnnbrain_captum.io import ImageFolderDataset, preprocessing_for
from dnnbrain_captum.runner import ItemLoadError, read_manifest

OCC = {"sliding_window_shapes": (8, 8), "strides": (4, 4)}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return digits_cnn()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_images(n=10)


def _loop(attribution, images, targets, batch, **kwargs) -> np.ndarray:  # noqa: ANN001
    parts = []
    for start in range(0, len(images), batch):
        t = targets[start : start + batch] if isinstance(targets, list) else targets
        parts.append(attribution.attribute(images[start : start + batch], target=t, **kwargs))
    return torch.cat(parts).numpy()


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        p.relative_to(folder).as_posix(): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
        )
        for p in sorted(folder.rglob("*"))
    }


def _logged(folder: Path) -> list[int]:
    """Chunk indices of the done log (one JSON line per chunk written in place)."""
    lines = (folder / "result.partial.done").read_text().splitlines()
    return [json.loads(line)["chunk"] for line in lines]


def test_saliency_equals_loop_of_attribute_calls(model, data, tmp_path) -> None:  # noqa: ANN001
    images, labels = data
    saliency = VanillaSaliencyImage(model, "conv5")
    targets = labels.tolist()
    summary = run_over(saliency, images, targets=targets, out=tmp_path, batch_size=4)
    result = read_results(tmp_path)
    assert isinstance(result, np.memmap) and result.shape == (10, 3, 32, 32)
    assert np.array_equal(result, _loop(saliency, images, targets, 4))  # same batches: exact
    one_by_one = _loop(saliency, images[8:], targets[8:], 1)  # the last, short chunk
    assert np.allclose(result[8:], one_by_one, atol=1e-6)
    assert (summary.computed, summary.reused, summary.n_items, summary.skipped) == (10, 0, 10, [])
    assert summary.items_per_second > 0 and "10 items" in str(summary)


def test_occlusion_upsampling_guided_tuple_items_and_loader(model, data, tmp_path) -> None:  # noqa: ANN001
    images, labels = data
    occlusion = OccluderDiscrepancyMapping(model, "conv5")
    run_over(
        occlusion,
        TensorDataset(images, labels),
        targets=7,
        out=tmp_path / "occ",
        batch_size=3,
        **OCC,
    )
    assert np.array_equal(read_results(tmp_path / "occ"), _loop(occlusion, images, 7, 3, **OCC))

    upsample = UpsamplingActivationMapping(model, "conv3")
    loader = DataLoader(TensorDataset(images, labels), batch_size=5)  # batch size from loader
    run_over(
        upsample, loader, targets=labels.numpy(), out=tmp_path / "up", interpolate_mode="bilinear"
    )
    expected = _loop(upsample, images, labels.tolist(), 5, interpolate_mode="bilinear")
    assert np.array_equal(read_results(tmp_path / "up"), expected)
    assert read_manifest(tmp_path / "up")["request"]["chunk_size"] == 5

    # a generic (non-tensor) data set goes through a DataLoader with collation
    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
            return images[i], f"name{i}"

    guided = GuidedSaliencyImage(model, "conv4")
    run_over(guided, Items(), targets=(2, 1, 1), out=tmp_path / "gd", batch_size=4)
    assert np.array_equal(read_results(tmp_path / "gd"), _loop(guided, images, (2, 1, 1), 4))


def test_noise_tunnel_is_seeded_per_chunk(model, data, tmp_path) -> None:  # noqa: ANN001
    from captum.attr import NoiseTunnel

    images, labels = data
    tunnel = NoiseTunnel(VanillaSaliencyImage(model, "conv5"))
    smooth = {"nt_type": "smoothgrad", "nt_samples": 3, "stdevs": 0.1}
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    run_over(tunnel, images, targets=labels, out=tmp_path / "a", batch_size=4, **smooth)
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's generator untouched
    run_over(tunnel, images, targets=labels, out=tmp_path / "b", batch_size=4, **smooth)
    parts = []
    for k in range(3):  # chunk k is computed with seed 0 + k
        torch.manual_seed(k)
        rows = slice(4 * k, 4 * k + 4)
        parts.append(tunnel.attribute(images[rows], target=labels[rows].tolist(), **smooth))
    expected = torch.cat(parts).numpy()
    assert np.array_equal(read_results(tmp_path / "a"), expected)
    assert np.array_equal(read_results(tmp_path / "b"), expected)
    manifest = read_manifest(tmp_path / "a")
    assert manifest["request"]["attribution"]["inner_class"].endswith("VanillaSaliencyImage")
    assert manifest["request"]["seed"] == 0 and manifest["request"]["parameters"]["stdevs"] == 0.1


def test_manifest_records_the_run(model, data, tmp_path) -> None:  # noqa: ANN001
    images, labels = data
    occlusion = OccluderDiscrepancyMapping(model, "conv5")
    ids = [f"stim{i:02d}.png" for i in range(10)]
    run_over(
        occlusion,
        images,
        targets=labels,
        out=tmp_path,
        batch_size=4,
        ids=ids,
        baselines=torch.zeros(1, 3, 1, 1),
        **OCC,
    )
    text = (tmp_path / "manifest.json").read_text()
    manifest = json.loads(text)
    request = manifest["request"]
    assert manifest["format"] == "dnnbrain_captum.run" and manifest["status"] == "complete"
    assert request["attribution"]["class"] == (
        "dnnbrain_captum.attr.occlusion.OccluderDiscrepancyMapping"
    )
    assert request["attribution"]["layer"] == "features.10"
    assert request["attribution"]["model"] == "dnnbrain_captum.models.digits.DigitsCNN"
    assert len(request["attribution"]["model_sha256"]) == 64
    assert request["parameters"]["sliding_window_shapes"] == [8, 8]
    assert request["parameters"]["strides"] == [4, 4]
    assert request["parameters"]["baselines"]["shape"] == [1, 3, 1, 1]
    assert request["stimulus_ids"] == ids
    assert request["targets"] == {"kind": "per_item", "value": labels.tolist()}
    assert manifest["shape"] == [10, 7, 7] and manifest["dtype"] == "float32"
    assert [(c["start"], c["stop"]) for c in manifest["chunks"]] == [(0, 4), (4, 8), (8, 10)]
    assert manifest["result"] == "result.npy" and manifest["skipped"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "result.npy"]
    assert "NaN" in text  # fill value written as a string: strict JSON


def test_resume_skips_done_chunks_and_equals_uninterrupted(
    model, data, tmp_path, monkeypatch
) -> None:  # noqa: ANN001, E501
    images, labels = data
    saliency = VanillaSaliencyImage(model, "conv5")
    run_over(saliency, images, targets=labels, out=tmp_path / "whole", batch_size=3)
    whole = np.asarray(read_results(tmp_path / "whole"))

    original = VanillaSaliencyImage.attribute
    calls = {"n": 0}

    def failing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VanillaSaliencyImage, "attribute", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_over(saliency, images, targets=labels, out=tmp_path / "part", batch_size=3)
    monkeypatch.setattr(VanillaSaliencyImage, "attribute", original)
    # rows of done chunks are in the preallocated result file; the chunk in flight is not logged
    names = sorted(p.name for p in (tmp_path / "part").iterdir())
    assert names == ["manifest.json", "result.partial.done", "result.partial.npy"]
    assert _logged(tmp_path / "part") == [0, 1]
    partial = np.load(tmp_path / "part" / "result.partial.npy", mmap_mode="r")
    assert partial.shape == whole.shape and np.array_equal(partial[:6], whole[:6])
    with pytest.raises(ValueError, match=r"not complete \(2 of 4 chunks done\)"):
        read_results(tmp_path / "part")
    # files of the user's that merely look temporary are left alone (no cleanup by pattern)
    (tmp_path / "part" / "notes.tmp-99999").write_bytes(b"mine")

    summary = run_over(saliency, images, targets=labels, out=tmp_path / "part", batch_size=3)
    assert (summary.reused, summary.computed) == (6, 4)
    assert np.array_equal(read_results(tmp_path / "part"), whole)
    assert (tmp_path / "part" / "notes.tmp-99999").read_bytes() == b"mine"
    # rerunning a complete run computes nothing and changes nothing
    before = _snapshot(tmp_path / "part")
    again = run_over(saliency, images, targets=labels, out=tmp_path / "part", batch_size=3)
    assert (again.reused, again.computed) == (10, 0)
    assert _snapshot(tmp_path / "part") == before


def test_resume_mixes_chunk_files_and_in_place_rows(model, data, tmp_path, monkeypatch) -> None:  # noqa: ANN001, E501
    """Chunk files (assemble=False, or ranks on other machines) and rows written in place into
    the result file (one machine) resume into each other."""
    images, labels = data
    saliency = VanillaSaliencyImage(model, "conv5")
    whole = saliency.attribute(images, target=labels.tolist()).numpy()
    original = VanillaSaliencyImage.attribute

    def crash_after(calls: int) -> None:
        count = {"n": 0}

        def failing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if count["n"] == calls:
                raise RuntimeError("simulated crash")
            count["n"] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(VanillaSaliencyImage, "attribute", failing)

    for first, second in ((False, True), (True, False)):
        out = tmp_path / f"{first}{second}"
        crash_after(1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_over(saliency, images, targets=labels, out=out, batch_size=3, assemble=first)
        crash_after(1)  # one more chunk, written the other way
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_over(saliency, images, targets=labels, out=out, batch_size=3, assemble=second)
        assert sorted(p.name for p in (out / "chunks").iterdir()) == [
            f"chunk-00000{int(first)}.json",
            f"chunk-00000{int(first)}.npy",
        ]
        assert _logged(out) == [int(not first)]
        monkeypatch.setattr(VanillaSaliencyImage, "attribute", original)
        summary = run_over(saliency, images, targets=labels, out=out, batch_size=3, assemble=first)
        assert (summary.reused, summary.computed) == (6, 4)
        assert np.allclose(read_results(out), whole, atol=1e-6)
        expected = ["manifest.json", "result.npy"] if first else ["chunks", "manifest.json"]
        assert sorted(p.name for p in out.iterdir()) == expected
        if not first:
            names = sorted(p.name for p in (out / "chunks").iterdir())
            assert names == [f"chunk-00000{k}.{e}" for k in range(4) for e in ("json", "npy")]


def test_done_log_without_its_result_file_counts_nothing(
    model, data, tmp_path, monkeypatch
) -> None:  # noqa: ANN001, E501
    images, labels = data
    saliency = VanillaSaliencyImage(model, "conv5")
    original = VanillaSaliencyImage.attribute
    count = {"n": 0}

    def failing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if count["n"] == 2:
            raise RuntimeError("simulated crash")
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VanillaSaliencyImage, "attribute", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_over(saliency, images, targets=labels, out=tmp_path, batch_size=3)
    monkeypatch.setattr(VanillaSaliencyImage, "attribute", original)
    (tmp_path / "result.partial.npy").unlink()  # the rows are gone: the log must not count
    summary = run_over(saliency, images, targets=labels, out=tmp_path, batch_size=3)
    assert (summary.reused, summary.computed) == (0, 10)
    expected = saliency.attribute(images, target=labels.tolist()).numpy()
    assert np.allclose(read_results(tmp_path), expected, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "result.npy"]


def test_different_run_is_refused_and_folder_unchanged(model, data, tmp_path, monkeypatch) -> None:  # noqa: ANN001, E501
    images, labels = data
    occlusion = OccluderDiscrepancyMapping(model, "conv5")
    run_over(occlusion, images, targets=labels, out=tmp_path, batch_size=4, **OCC)
    before = _snapshot(tmp_path)
    cases = [
        (
            dict(targets=labels, batch_size=4, sliding_window_shapes=(8, 8), strides=(2, 2)),
            occlusion,
            "parameters.strides",
        ),
        (dict(targets=3, batch_size=4, **OCC), occlusion, "targets"),
        (dict(targets=labels, batch_size=5, **OCC), occlusion, "chunk_size"),
        (
            dict(targets=labels, batch_size=4, **OCC),
            OccluderDiscrepancyMapping(model, "conv4"),
            "attribution.layer",
        ),
        (
            dict(targets=labels, batch_size=4, **OCC),
            OccluderDiscrepancyMapping(digits_cnn(pretrained=False), "conv5"),
            "attribution.model_sha256",
        ),
    ]
    for kwargs, attribution, culprit in cases:
        with pytest.raises(ValueError, match=culprit.replace(".", r"\.")) as info:
            run_over(attribution, images, out=tmp_path, **kwargs)
        assert "nothing was changed" in str(info.value)
        assert _snapshot(tmp_path) == before
    with pytest.raises(ValueError, match="stimulus_ids"):
        run_over(
            occlusion,
            images,
            targets=labels,
            out=tmp_path,
            batch_size=4,
            ids=[f"x{i}" for i in range(10)],
            **OCC,
        )
    assert _snapshot(tmp_path) == before

    # an interrupted run is protected the same way
    part = tmp_path / "part"
    original = OccluderDiscrepancyMapping.attribute

    def failing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise KeyboardInterrupt if failing.calls == 1 else None  # type: ignore[misc]

    calls = {"n": 0}

    def crash_second(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OccluderDiscrepancyMapping, "attribute", crash_second)
    with pytest.raises(RuntimeError, match="crash"):
        run_over(occlusion, images, targets=labels, out=part, batch_size=4, **OCC)
    monkeypatch.setattr(OccluderDiscrepancyMapping, "attribute", original)
    partial = _snapshot(part)
    with pytest.raises(ValueError, match="parameters.baselines"):
        run_over(occlusion, images, targets=labels, out=part, batch_size=4, baselines=0.5, **OCC)
    assert _snapshot(part) == partial
    # overwrite=True replaces the run with the new one
    run_over(
        occlusion,
        images,
        targets=labels,
        out=part,
        batch_size=4,
        baselines=0.5,
        overwrite=True,
        **OCC,
    )
    assert np.array_equal(
        read_results(part), _loop(occlusion, images, labels.tolist(), 4, baselines=0.5, **OCC)
    )


def _digit_folder(folder: Path, images: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"digit{i:02d}.png")


def test_corrupt_image_is_named_and_others_kept(model, data, tmp_path) -> None:  # noqa: ANN001
    images, _ = data
    folder = tmp_path / "stimuli"
    _digit_folder(folder, images)
    (folder / "digit04.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = ImageFolderDataset(folder, transform=preprocessing_for(model))
    saliency = VanillaSaliencyImage(model, "conv5")

    with pytest.raises(ItemLoadError, match=r"item 4 \(digit04\.png\).*on_error='skip'"):
        run_over(saliency, dataset, targets=1, out=tmp_path / "out", batch_size=3)
    # the chunk before the bad one was kept; a rerun with on_error="skip" resumes
    assert _logged(tmp_path / "out") == [0]
    summary = run_over(
        saliency,
        dataset,
        targets=1,
        out=tmp_path / "out",
        batch_size=3,
        on_error="skip",
        num_workers=2,
    )  # loading in worker processes
    assert summary.reused == 3 and summary.computed == 7
    assert [(s["index"], s["id"]) for s in summary.skipped] == [(4, "digit04.png")]
    assert "digit04.png" in summary.skipped[0]["error"]
    manifest = read_manifest(tmp_path / "out")
    assert manifest["skipped"] == summary.skipped and manifest["on_error"] == "skip"
    assert manifest["request"]["stimulus_ids"][4] == "digit04.png"

    result = read_results(tmp_path / "out")
    loaded = torch.stack([dataset[i][0] for i in range(10) if i != 4])
    expected = saliency.attribute(loaded, target=1).numpy()
    keep = [i for i in range(10) if i != 4]
    assert np.isnan(result[4]).all()
    assert np.allclose(result[keep], expected, atol=1e-6)
    assert not np.isnan(result[keep]).any()


def test_all_items_of_a_chunk_unreadable(model, data, tmp_path) -> None:  # noqa: ANN001
    images, _ = data
    folder = tmp_path / "stimuli"
    _digit_folder(folder, images[:5])
    for name in ("digit00.png", "digit01.png"):
        (folder / name).write_bytes(b"not an image")
    dataset = ImageFolderDataset(folder, transform=preprocessing_for(model))
    upsample = UpsamplingActivationMapping(model, "conv2")
    for assemble in (True, False):
        out = tmp_path / f"out{assemble}"
        summary = run_over(
            upsample, dataset, targets=0, out=out, batch_size=2, on_error="skip", assemble=assemble
        )
        result = np.asarray(read_results(out))
        assert [s["id"] for s in summary.skipped] == ["digit00.png", "digit01.png"]
        assert result.shape == (5, 32, 32) and np.isnan(result[:2]).all()
        loaded = torch.stack([dataset[i][0] for i in range(2, 5)])
        assert np.allclose(result[2:], upsample.attribute(loaded, target=0).numpy(), atol=1e-6)


_PLAIN_READER = r"""
import json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
manifest = json.loads((out / "manifest.json").read_text())
assert manifest["status"] == "complete"
if manifest["result"] is not None:
    array = np.load(out / manifest["result"], mmap_mode="r")
else:
    array = np.concatenate([np.load(out / c["file"]) for c in manifest["chunks"]])
assert list(array.shape) == manifest["shape"] and str(array.dtype) == manifest["dtype"]
np.save(sys.argv[2], np.asarray(array))
print(json.dumps({"ids": manifest["request"]["stimulus_ids"],
                  "targets": manifest["request"]["targets"],
                  "ours": [m for m in sys.modules if m.startswith(("dnnbrain_captum", "torch"))]}))
"""


def test_output_opens_with_plain_numpy_and_json(model, data, tmp_path) -> None:  # noqa: ANN001
    images, labels = data
    saliency = VanillaSaliencyImage(model, "conv5")
    for assemble in (True, False):
        out = tmp_path / f"run{assemble}"
        run_over(saliency, images, targets=labels, out=out, batch_size=4, assemble=assemble)
        if not assemble:
            assert len(list((out / "chunks").glob("*.npy"))) == 3
        copy = tmp_path / f"copy{assemble}.npy"
        done = subprocess.run(
            [sys.executable, "-I", "-c", _PLAIN_READER, str(out), str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["ours"] == []  # neither our package nor torch was imported
        assert report["ids"] == [str(i) for i in range(10)]
        assert report["targets"]["value"] == labels.tolist()
        assert np.array_equal(np.load(copy), np.asarray(read_results(out)))


def test_progress_and_summary_logging(model, data, tmp_path, caplog, capsys) -> None:  # noqa: ANN001
    images, labels = data
    saliency = VanillaSaliencyImage(model, "conv5")
    with caplog.at_level(logging.INFO, logger="dnnbrain_captum.runner"):
        run_over(saliency, images, targets=labels, out=tmp_path, batch_size=4, show_progress=True)
    assert "10 items in" in caplog.text and "items/s" in caplog.text
    assert "10/10" in capsys.readouterr().err


def test_bad_input(model, data, tmp_path) -> None:  # noqa: ANN001
    images, labels = data
    saliency = VanillaSaliencyImage(model, "conv5")
    with pytest.raises(ValueError, match="on_error"):
        run_over(saliency, images, out=tmp_path / "a", on_error="ignore")
    with pytest.raises(ValueError, match="targets has 3 entries but the data set has 10"):
        run_over(saliency, images, targets=[1, 2, 3], out=tmp_path / "a")
    with pytest.raises(ValueError, match="batch_size"):
        run_over(saliency, images, targets=1, out=tmp_path / "a", batch_size=0)
    with pytest.raises(TypeError, match="attribute"):
        run_over(model, images, targets=1, out=tmp_path / "a")
    with pytest.raises(ValueError, match="empty"):
        run_over(saliency, images[:0], targets=1, out=tmp_path / "a")
    with pytest.raises(ValueError, match="ids has 2 entries"):
        run_over(saliency, images, targets=1, out=tmp_path / "a", ids=["a", "b"])
    with pytest.raises(TypeError, match="targets"):
        run_over(saliency, images, targets=1.5, out=tmp_path / "a")

    class Pooled:
        def attribute(self, inputs, target=None):  # noqa: ANN001, ANN201
            return inputs.sum()

    with pytest.raises(ValueError, match="one result per item"):
        run_over(Pooled(), images, out=tmp_path / "b")
    # run files without a manifest: refused, untouched
    stray = tmp_path / "stray"
    (stray / "chunks").mkdir(parents=True)
    (stray / "chunks" / "chunk-000000.npy").write_bytes(b"?")
    before = _snapshot(stray)
    with pytest.raises(ValueError, match="no manifest.json"):
        run_over(saliency, images, targets=1, out=stray)
    assert _snapshot(stray) == before
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_results(tmp_path / "nowhere")
