"""The speed and memory options every training job has (nbutils.training.job.TrainingConfig): with each of them, the
three jobs train the same losses as without it, on CPU.

Each job trains 2 steps on the shared tiny run (loss logged every step) once as it is and once per option. The first
step's loss is that of the same weights on the same batch; the second follows one identical update. bf16 is checked
as autocast on CPU (the Trainer's `bf16=True` with `use_cpu`), the path a GPU takes with CUDA autocast.
"""

import json
import shutil

import pytest
import torch

from nbutils import stages
from nbutils.evaluation import caption_metrics as caption_metrics_module
from nbutils.training import clip as clip_training
from nbutils.training import clipcap, job
from nbutils.training import encoder_decoder as ed
from tests.training import test_clipcap, test_encoder_decoder

STEPS = dict(max_steps=2, logging_steps=1, batch_size=8, resume="")
JOBS = {
    "train_clip": (
        clip_training.TrainClipConfig,
        clip_training.train_clip,
        dict(projection_dim=16, vision_tower="vit", vision_width=32, text_buckets=1),
    ),
    # the tiny models of the jobs' own tests
    "train_encoder_decoder": (
        ed.TrainEncoderDecoderConfig,
        ed.train_encoder_decoder,
        test_encoder_decoder.TINY,
    ),
    "train_clipcap": (clipcap.TrainClipCapConfig, clipcap.train_clipcap, test_clipcap.TINY),
}
# Each option and how far its losses may drift from the baseline's (relative). The fp32 options compute the same
# math in another order; bf16 autocast rounds every matrix product's inputs to 8 significant bits (about 0.4 %).
OPTIONS = {
    "gradient_checkpointing": ({"gradient_checkpointing": True}, 1e-5),
    "eager_attention": ({"attn_implementation": "eager"}, 1e-5),
    "bf16": ({"precision": "bf16"}, 2e-2),
    "torch_compile": ({"torch_compile": True}, 1e-4),
    "loader_workers": ({"num_workers": 2}, 1e-6),  # the same batches, decoded and collated in two processes
}


@pytest.fixture(scope="module")
def clip_run(prepared_run, tmp_path_factory):
    """A run folder with processdata_03 (copied) and a 1-step train_clip model, which train_clipcap embeds with."""
    run_dir = tmp_path_factory.mktemp("options") / "run"
    shutil.copytree(prepared_run["run_dir"], run_dir)
    config_class, train, settings = JOBS["train_clip"]
    train(config_class(run_dir=str(run_dir), output_dir=str(run_dir / "train_clip"), **{**settings, **STEPS}))
    return run_dir


@pytest.fixture(scope="module")
def no_java():
    """METEOR is skipped (None with a reason): saves a JVM start per scoring."""
    which = shutil.which
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            caption_metrics_module.shutil,
            "which",
            lambda name, *a, **k: None if name == "java" else which(name, *a, **k),
        )
        yield


def train(clip_run, output_dir, name: str, **options) -> tuple[list[float], dict]:
    """Job `name` for 2 steps with `options`: its per-step training losses and its summary."""
    config_class, train_job, settings = JOBS[name]
    extra = {"embeddings_dir": str(output_dir / "embeddings")} if name == "train_clipcap" else {}
    config = config_class(
        run_dir=str(clip_run), output_dir=str(output_dir), **{**settings, **STEPS, **extra, **options}
    )
    torch.manual_seed(0)
    train_job(config)
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    summary = json.loads((output_dir / "summary.json").read_text())
    return [h["loss"] for h in history if "loss" in h], summary


@pytest.fixture(scope="module")
def baselines(clip_run, no_java, tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    return {name: train(clip_run, root / name, name) for name in JOBS}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("name", JOBS)
def test_each_option_trains_the_same_losses(name, option, baselines, clip_run, no_java, tmp_path):
    settings, tolerance = OPTIONS[option]
    losses, summary = train(clip_run, tmp_path / name, name, **settings)
    expected, baseline_summary = baselines[name]
    assert len(losses) == len(expected) == 2 and summary["steps"] == 2
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=tolerance, atol=0)
    assert baseline_summary["precision"] == "fp32"
    assert summary["precision"] == ("bf16" if option == "bf16" else "fp32")


def test_training_arguments_carry_the_options(tmp_path):
    config = ed.TrainEncoderDecoderConfig(
        run_dir="r",
        precision="bf16",
        torch_compile=True,
        gradient_checkpointing=True,
        pin_memory=True,
        tf32=True,
    )
    args = job.training_arguments(config, tmp_path, learning_rate=1e-3, dataloader_drop_last=False)
    assert args.bf16 is True and args.torch_compile is True
    # Page-locked memory and TF32 only mean something on a CUDA GPU.
    assert args.dataloader_pin_memory is torch.cuda.is_available()
    assert args.tf32 is (
        True if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8 else None
    )
    plain = job.training_arguments(ed.TrainEncoderDecoderConfig(run_dir="r"), tmp_path, 1e-3, False)
    assert plain.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert plain.torch_compile is False


def test_precision_must_be_one_of_three(tmp_path):
    config = ed.TrainEncoderDecoderConfig(run_dir="r", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32; got 'fp16'"):
        job.training_arguments(config, tmp_path, learning_rate=1e-3, dataloader_drop_last=False)
    assert job.resolved_precision("fp32") == "fp32" and job.resolved_precision("bf16") == "bf16"


def test_bf16_on_a_gpu_without_it_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError, match='precision="bf16": Tesla V100-SXM2-16GB has no bf16; use "auto"'):
        job.resolved_precision("bf16")
    assert job.resolved_precision("auto") == "fp32"


def test_attention_is_switched_in_every_sub_model_and_bad_names_are_named(clip_run):
    model = stages.load_trained_clip(clip_run).bundle.model
    job.set_attention(model, "eager")
    kinds = {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")}
    assert kinds == {"eager"}
    with pytest.raises(ValueError, match="attn_implementation='no_such_kernel'"):
        job.set_attention(model, "no_such_kernel")


def test_activation_checkpointing_reaches_the_towers_of_a_dual_encoder(clip_run):
    model = stages.load_trained_clip(clip_run).bundle.model
    assert (
        not model.supports_gradient_checkpointing
    )  # so TrainingArguments' own switch would refuse the model
    assert job.checkpoint_activations(model) == [
        type(model.vision_model).__name__,
        type(model.text_model).__name__,
    ]
    flags = [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    assert len(flags) >= 2 and all(flags)


def test_eager_attention_never_calls_the_fused_kernel(monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    fused, calls = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    )
    input_ids = torch.randint(0, 100, (2, 8))
    job.set_attention(model, "sdpa")
    model(input_ids)
    assert len(calls) == 2  # one per layer
    job.set_attention(model, "eager")
    calls.clear()
    model(input_ids)
    assert calls == []
