"""The infer stage on a copy of the shared tiny prepared run with tiny trained models (CPU)."""

import json
import shutil

import pandas as pd
import pytest
import torch

from nbutils import infer as infer_stage
from nbutils import stages
from nbutils.errors import DataError
from nbutils.evaluation.clipscore import score_captions
from nbutils.models.captioners import load_any_captioner
from nbutils.training import clip as clip_training
from nbutils.training import clipcap, encoder_decoder

KEYS = {
    "n_images", "models", "true_captions", "clipscore", "refclipscore", "clipscore_model", "rejected_images",
    "decoding",
}  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(prepared_run, tmp_path_factory):
    """A run folder with processdata_03 (copied) and 2-step train_clip, train_clipcap and train_encoder_decoder."""
    run_dir = tmp_path_factory.mktemp("infer") / "run"
    shutil.copytree(prepared_run["run_dir"], run_dir)
    common = dict(run_dir=str(run_dir), batch_size=8, max_steps=2, resume="")
    clip_training.train_clip(
        clip_training.TrainClipConfig(
            **common, output_dir=str(run_dir / "train_clip"), projection_dim=16, vision_width=32
        )
    )
    clipcap.train_clipcap(
        clipcap.TrainClipCapConfig(
            **common, output_dir=str(run_dir / "train_clipcap"), prefix_len=2, hidden_size=32, num_heads=2,
            embeddings_dir=str(run_dir / "embeddings"),
        )
    )  # fmt: skip
    encoder_decoder.train_encoder_decoder(
        encoder_decoder.TrainEncoderDecoderConfig(
            **common, output_dir=str(run_dir / "train_encoder_decoder"), hidden_size=32, encoder_layers=1,
            num_heads=2, intermediate_size=64, patch_size=8,
        )
    )  # fmt: skip
    return run_dir


def _config(run_dir, output_dir, **overrides):
    return infer_stage.InferConfig(run_dir=str(run_dir), output_dir=str(output_dir), **overrides)


def test_every_captioner_on_the_test_split_side_by_side(trained_run, tmp_path):
    run = infer_stage.infer(_config(trained_run, tmp_path / "infer", max_new_tokens=8, batch_size=8))
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert KEYS <= set(summary) and summary["n_images"] == 12 and summary["rejected_images"] == 0
    assert list(summary["models"]) == ["train_encoder_decoder", "train_clipcap"]
    for entry in summary["models"].values():
        assert {"bleu4", "cider"} <= set(entry["metrics"]) and entry["attribute_scores"]["n_images"] == 12
        assert entry["empty_captions"] == 0 or "empty captions: " in summary["headline"]
        assert set(entry["images_per_second"]) == {"greedy", "beam"}
        assert all(v > 0 for v in entry["images_per_second"].values())
    assert summary["clipscore_model"] == "train_clip of this run"
    assert set(summary["clipscore"]) == set(summary["refclipscore"]) == set(summary["models"])
    predictions = pd.read_csv(tmp_path / "infer" / "predictions.csv", keep_default_na=False)
    assert len(predictions) == 24 and set(predictions["rank"]) == {0}
    assert list(run.metrics.index) == [
        "train_encoder_decoder",
        "train_clipcap",
        "true captions",
        "constant caption",
    ]
    ceiling = summary["true_captions"]
    assert ceiling["n_images"] == 12 and run.metrics.loc["true captions", "CIDEr"] == ceiling["cider"]
    assert ceiling["attribute_scores"]["hallucination_rate"] == 0.0
    assert (
        run.metrics.loc["constant caption", "CIDEr"] == summary["models"]["train_clipcap"]["baseline_cider"]
    )
    assert f"(true captions {ceiling['cider']:.3f}, constant caption " in summary["headline"]
    assert list(run.throughput.columns) == ["greedy, images/s", "beam, images/s"]
    assert list(summary)[0] == "headline" and summary["headline"] == infer_stage.headline(summary)
    assert summary["headline"].startswith("Captioned 12 images with 2 models (")
    assert "CIDEr train_encoder_decoder " in summary["headline"] and "; CLIPScore " in summary["headline"]
    assert (
        ">true captions<" in run.metrics_table().to_html()
        and ">CLIPScore<" in run.clipscore_table().to_html()
    )
    attributes = run.attribute_table().to_html()
    assert ">train_clipcap<" in attributes and ">true captions<" in attributes and " %<" in attributes
    assert run.throughput_table() is not None and run.rejected_table() is None
    assert len(run.example_queries(3)) == 3
    found = run.image_to_text_table(n_images=2, k=2).data
    assert list(found.columns) == ["image", "reference found", "cosine"] and len(found) == 4

    # CLIPScore of one model against a direct computation with the same CLIP
    clip = stages.load_trained_clip(trained_run).bundle
    shown = run.per_image[run.per_image["model"] == "train_clipcap"]
    test = stages.load_prepared(trained_run).dataset("test")
    from nbutils.evaluation.embeddings import embed_images

    mean, std = stages.load_prepared(trained_run).mean_std
    images = embed_images(clip, test, mean, std)
    assert list(shown["image_path"]) == test.image_paths
    direct = score_captions(clip, images, list(shown["caption"]), test.captions)
    assert shown["clipscore"].tolist() == pytest.approx(direct["clipscore"].tolist(), abs=1e-5)
    assert summary["refclipscore"]["train_clipcap"] == pytest.approx(direct["refclipscore"].mean(), abs=1e-5)
    html = run.gallery_html(n=3, sort_by="cider")
    assert html.count("<img") == 3 and "✎ train_clipcap" in html and "cider" in html
    # the demo's ground truth: what each caption states wrongly, for the browser; one per false statement
    assert "attribute_errors" in run.per_image
    for model, errors in run.per_image.groupby("model")["attribute_errors"]:
        named = {e for listed in errors if listed for e in listed.split(", ")}
        assert named <= {"colour", "shape", "size", "position", "count", "hallucination"}
        assert (errors != "").sum() == 12 - run.attributes[model]["no_false_statement"]["count"]

    # search: text -> image and image -> text against cosines computed here
    from nbutils.evaluation.embeddings import embed_texts

    query = test.captions[3][0]
    found = run.search([query], k=4)[0]
    cosines = (embed_texts(clip, [query]) @ images.T)[0]
    want = [test.image_paths[i] for i in cosines.argsort(descending=True)[:4].tolist()]
    assert found["images"] == want and found["scores"] == sorted(found["scores"], reverse=True)
    texts = [c for caps in test.captions for c in caps]
    best = run.image_to_text([test.image_paths[5]], texts, k=2)[0]
    text_cosines = embed_texts(clip, texts) @ images[5]
    assert best["texts"] == [texts[i] for i in text_cosines.argsort(descending=True)[:2].tolist()]
    assert "<img" in run.search_html([query], k=2)

    # the caption browser over this run, re-captioning with the loaded captioners
    from nbutils.reporting.browser import CaptionBrowser

    browser = CaptionBrowser.from_infer(run, run.captioners)
    assert browser.current()["count"] == 12 and len(browser.current()["rows"]) == 2
    shown = browser.recaption("greedy")
    assert all(r["preset"] == "greedy" for r in shown["rows"])


def test_a_folder_with_bad_files_lists_them_and_captions_the_rest(trained_run, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    test_paths = stages.load_prepared(trained_run).tables["test"]["image_path"].unique()[:3]
    for i, path in enumerate(test_paths):
        shutil.copy(path, folder / f"{i}.jpg")
    (folder / "notes.jpg").write_text("<html>not an image</html>")
    (folder / "empty.png").write_bytes(b"")
    run = infer_stage.infer(
        _config(trained_run, tmp_path / "out", images=str(folder), captioners="train_clipcap", decoding="sample",
                num_return_sequences=2, throughput=False, max_new_tokens=6)
    )  # fmt: skip
    assert run.summary["n_images"] == 3 and run.summary["rejected_images"] == 2
    reasons = dict(zip(run.images.rejected["image_path"], run.images.rejected["reason"]))
    assert reasons[str(folder / "empty.png")].startswith("empty file")
    assert reasons[str(folder / "notes.jpg")].startswith("not an image")
    assert len(run.predictions) == 6 and sorted(set(run.predictions["rank"])) == [0, 1]
    assert (
        run.metrics is None
        and run.summary["refclipscore"] is None
        and run.summary["clipscore"]["train_clipcap"] >= 0
    )


def test_decoding_is_a_preset_or_explicit_json_settings():
    config = infer_stage.InferConfig(decoding='{"preset": "beam", "num_beams": 3}', max_new_tokens=7)
    settings = infer_stage.decoding_settings(config)
    assert (
        settings["num_beams"] == 3
        and settings["max_new_tokens"] == 7
        and settings["num_return_sequences"] == 1
    )
    greedy = infer_stage.decoding_settings(infer_stage.InferConfig(decoding="greedy", max_new_tokens=0))
    assert greedy["max_new_tokens"] == 20 and greedy["num_beams"] == 1
    with pytest.raises(ValueError, match="not valid JSON"):
        infer_stage.decoding_settings(infer_stage.InferConfig(decoding="{beam"))
    with pytest.raises(ValueError, match="unknown decoding setting 'beams'"):
        infer_stage.decoding_settings(infer_stage.InferConfig(decoding='{"beams": 2}'))


def test_a_manifest_with_references_and_a_single_file(trained_run, tmp_path):
    table = stages.load_prepared(trained_run).tables["test"].head(6)
    table[["image_path", "text"]].to_csv(tmp_path / "manifest.csv", index=False)
    run = infer_stage.infer(
        _config(trained_run, tmp_path / "a", images=str(tmp_path / "manifest.csv"), captioners="train_clipcap",
                throughput=False, clip_model="none", max_new_tokens=6)
    )  # fmt: skip
    assert run.summary["n_images"] == table["image_path"].nunique() and run.metrics is not None
    assert run.summary["clipscore_model"] is None
    one = infer_stage.infer(
        _config(trained_run, tmp_path / "b", images=table["image_path"].iloc[0], captioners="train_encoder_decoder",
                throughput=False, clip_model="none", max_new_tokens=6)
    )  # fmt: skip
    assert one.summary["n_images"] == 1 and len(one.predictions) == 1


def test_a_saved_captioner_folder_loads_and_bad_sources_are_named(trained_run, tmp_path):
    captioner = load_any_captioner(trained_run / "train_clipcap" / "model")
    assert captioner.kind == "clipcap" and captioner.clip is not None
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert len(captioner.caption(images, {"preset": "greedy", "max_new_tokens": 4})) == 2
    with pytest.raises(ValueError, match="no such folder"):
        load_any_captioner(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="not a split of this run"):
        infer_stage.infer(_config(trained_run, tmp_path / "x", images="nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable image"):
        infer_stage.infer(_config(trained_run, tmp_path / "y", images=str(empty)))


def test_a_run_without_the_stages_infer_needs_names_them_and_the_parameter(trained_run, tmp_path):
    """JupyterLab's first try: infer.ipynb opened before the run it points at has been built."""
    lab = tmp_path / "outputs" / "lab"
    shutil.copytree(trained_run, tmp_path / "outputs" / "demo")
    config = infer_stage.InferConfig(run_dir=str(lab))
    assert config.output_dir == str(lab / "infer")
    with pytest.raises(DataError) as info:
        infer_stage.infer(config)
    message = str(info.value)
    assert message.startswith(
        f"images='test' is a split of processdata_03, but the run folder {lab} does not exist"
    )
    assert (
        "set run_dir to a run folder that has it. Runs beside it that have processdata_03: demo." in message
    )
    # a run with its splits but no trained captioner
    lab.mkdir()
    shutil.copytree(trained_run / "processdata_03", lab / "processdata_03")
    with pytest.raises(DataError) as info:
        infer_stage.infer(infer_stage.InferConfig(run_dir=str(lab), throughput=False, clip_model="none"))
    message = str(info.value)
    assert "no captioner to load: the run folder" in message
    assert "has no finished train_encoder_decoder or train_clipcap" in message
    assert "Runs beside it that have train_encoder_decoder or train_clipcap: demo." in message


def test_headline_says_what_happened_in_one_sentence():
    models = {
        "train_clipcap": {"metrics": {"cider": 2.0112}, "baseline_cider": 0.2031, "empty_captions": 3},
        "train_encoder_decoder": {
            "metrics": {"cider": 1.6461},
            "baseline_cider": 0.2031,
            "empty_captions": 0,
        },
    }
    summary = {"n_images": 267, "decoding": {"given": "beam"}, "models": models, "rejected_images": 0,
               "true_captions": {"cider": 2.5413},
               "clipscore": {"train_clipcap": 0.7123, "train_encoder_decoder": 0.65}}  # fmt: skip
    assert infer_stage.headline(summary) == (
        "Captioned 267 images with 2 models (beam decoding): CIDEr train_clipcap 2.011, train_encoder_decoder "
        "1.646 (true captions 2.541, constant caption 0.203); empty captions: train_clipcap 3; CLIPScore "
        "train_clipcap 0.712, train_encoder_decoder 0.650."
    )
    no_ceiling = {**summary, "true_captions": None}  # no image with two references
    assert "(constant caption 0.203)" in infer_stage.headline(no_ceiling)
    custom = {**summary, "decoding": {"given": '{"num_beams": 2}'}}
    assert infer_stage.headline(custom).startswith("Captioned 267 images with 2 models (custom decoding): ")
    bare = {"n_images": 5, "decoding": {"given": "greedy"}, "models": {"x": {"kind": "hub"}}, "clipscore": None,
            "rejected_images": 2}  # fmt: skip
    assert infer_stage.headline(bare) == (
        "Captioned 5 images with 1 model (greedy decoding); no references, so no caption metrics; 2 files rejected."
    )
