"""Model names that are neither folders nor reachable fail at once, naming the parameter, the path and the hub;
folders and hub ids in the local hub cache still load offline. No test touches the network."""

import copy
import errno
import socket
import time

import huggingface_hub
import pytest
from huggingface_hub import constants

from nbutils.models import model_names
from nbutils.models.captioners import load_any_captioner
from nbutils.models.clip import ClipBundle, compose_dual_encoder, load_clip_model, save_clip
from nbutils.models.clipcap import load_clipcap_language_model, mapper_settings
from nbutils.models.encoder_decoder import load_encoder_decoder
from nbutils.models.image_processors import load_image_processor
from nbutils.models.model_names import resolve_model_name

SIZE = 32


def _hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _no_network(monkeypatch):
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)


OFFLINE = pytest.mark.parametrize(
    "go_offline", [_hub_offline, _no_network], ids=["HF_HUB_OFFLINE", "no network"]
)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local hub cache in tmp_path, where huggingface_hub and transformers look."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _raises_at_once(name, parameter="decoder_model"):
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        resolve_model_name(name, parameter)
    assert time.perf_counter() - start < 1.0
    return str(error.value)


@OFFLINE
def test_a_misspelt_folder_or_hub_id_fails_at_once_naming_parameter_path_and_hub(
    go_offline, monkeypatch, tmp_path, hub_cache
):
    go_offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "uer_gpt2_like").mkdir(parents=True)
    # `models/x` is a folder path and a well-formed hub id at once: both readings are reported
    message = _raises_at_once("models/uer_gpt2_likee")
    assert message.startswith("decoder_model='models/uer_gpt2_likee': no such folder: ")
    assert str(tmp_path / "models" / "uer_gpt2_likee") in message
    assert "did you mean 'models/uer_gpt2_like'?" in message
    assert "the Hugging Face hub is not reachable" in message and "not in the local hub cache" in message

    message = _raises_at_once("uer/gpt2-chinese-cluecorpussmal")
    assert "decoder_model='uer/gpt2-chinese-cluecorpussmal': no such folder: " in message
    assert str(tmp_path / "uer" / "gpt2-chinese-cluecorpussmal") in message
    assert "the Hugging Face hub is not reachable" in message


def test_names_written_as_paths_or_not_shaped_like_hub_ids(monkeypatch, tmp_path):
    _hub_offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # written as paths: only a folder was meant, the hub is not mentioned
    for name, where in (
        ("./x", tmp_path / "x"),
        ("~/x", tmp_path / "home" / "x"),
        (str(tmp_path / "abs"), tmp_path / "abs"),
    ):
        message = _raises_at_once(name, "encoder")
        assert message == f"encoder={name!r}: no such folder: {where}."
    # a revision or subfolder in the name is neither a folder here nor a hub id
    for name in ("Salesforce/blip-image-captioning-base/decoder", "gpt2@main"):
        message = _raises_at_once(name, "encoder")
        assert "no such folder" in message and "Nor is it a hub id" in message
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "is a file" in _raises_at_once("model.safetensors", "encoder")
    with pytest.raises(ValueError, match="encoder is empty"):
        resolve_model_name("", "encoder")


def test_existing_folders_resolve_with_home_expanded(monkeypatch, tmp_path):
    _hub_offline(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "model").mkdir()
    assert resolve_model_name("~/model", "encoder") == str(tmp_path / "model")
    assert resolve_model_name(tmp_path / "model", "encoder") == str(tmp_path / "model")


def _put_in_hub_cache(cache, hub_id, bundle):
    """`bundle` saved where `hf download hub_id` would have put it."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_clip(bundle, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


@OFFLINE
def test_a_hub_id_in_the_local_cache_loads_offline(
    go_offline, monkeypatch, hub_cache, tokenizer, make_tiny_dual_encoder
):
    tokenizer = copy.deepcopy(tokenizer)
    model = make_tiny_dual_encoder(tokenizer, SIZE)
    snapshot = _put_in_hub_cache(
        hub_cache, "someone/tiny-clip", ClipBundle(model, tokenizer, load_image_processor("vit", SIZE), "")
    )
    go_offline(monkeypatch)
    start = time.perf_counter()
    assert resolve_model_name("someone/tiny-clip", "model") == str(snapshot)
    assert time.perf_counter() - start < 1.0
    bundle = load_clip_model("someone/tiny-clip", parameter="model")
    assert bundle.kind == "dual_encoder" and len(bundle.tokenizer) == len(tokenizer)
    assert "not in the local hub cache" in _raises_at_once("someone/other-clip", "model")


def test_with_the_hub_reachable_a_missing_repo_is_named_and_an_existing_one_passes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model_names, "hub_unreachable", lambda: None)
    monkeypatch.setattr(
        huggingface_hub, "repo_exists", lambda hub_id: hub_id == "uer/gpt2-chinese-cluecorpussmall"
    )
    assert (
        resolve_model_name("uer/gpt2-chinese-cluecorpussmall", "decoder_model")
        == "uer/gpt2-chinese-cluecorpussmall"
    )
    message = _raises_at_once("uer/gpt2-chinese-cluecorpussmal")
    assert str(tmp_path / "uer" / "gpt2-chinese-cluecorpussmal") in message
    assert "Nor does the Hugging Face hub have a model 'uer/gpt2-chinese-cluecorpussmal'" in message


def test_a_hub_that_does_not_answer_counts_as_unreachable_after_the_short_timeout(monkeypatch):
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(model_names, "CONNECT_TIMEOUT", 0.2)

    def hangs(*args, **kwargs):  # a name lookup that never comes back within the test
        time.sleep(5)
        raise OSError(errno.ETIMEDOUT, "timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    start = time.perf_counter()
    assert "did not answer within 0.2 s" in model_names.hub_unreachable()
    assert time.perf_counter() - start < 1.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_names.hub_unreachable() == "HF_HUB_OFFLINE is set"


@pytest.mark.parametrize(
    "load, parameter",
    [
        (lambda: load_clip_model("someone/clip-typo"), "model_name_or_path"),
        (lambda: load_clip_model("someone/clip-typo", parameter="clip_model"), "clip_model"),
        (lambda: compose_dual_encoder("google/vit-typo", "bert-base-chinese"), "vision_model"),
        (lambda: load_encoder_decoder("google/vit-typo", "uer/gpt2-typo", "gpt2"), "encoder"),
        (lambda: load_clipcap_language_model("uer/gpt2-typo", mapper_settings(8)), "language_model"),
        (lambda: load_any_captioner("someone/captioner-typo"), "captioner"),
        (lambda: load_image_processor("google/vit-typo"), "image_processor"),
    ],
    ids=["clip", "clip as clip_model", "compose", "captioner", "clipcap", "any captioner", "image processor"],
)
def test_every_loader_names_its_parameter_at_once(load, parameter, monkeypatch, hub_cache):
    _hub_offline(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"^{parameter}=.*no such folder.*hub is not reachable"):
        load()
    assert time.perf_counter() - start < 1.0
