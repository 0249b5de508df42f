import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

import nbutils.training.clip_loss as cl
from nbutils.training.clip_loss import (
    MAX_LOGIT_SCALE,
    ClipLoss,
    chance_loss,
    clamp_logit_scale_,
    clip_loss,
)


def _hand_loss(image, text, scale, groups=None, negatives=None, negative_groups=None):
    """The loss with plain Python loops: normalise, score, log-sum-exp per row and per column.

    With `negatives`, image i's row also holds every negative j, except one whose negative_groups[j]
    equals groups[i] (the same text as image i's own caption).
    """

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    image, text = [unit(v) for v in image.tolist()], [unit(v) for v in text.tolist()]
    n = len(image)
    sim = [[scale * sum(a * b for a, b in zip(image[i], text[j])) for j in range(n)] for i in range(n)]
    negative_sim = [[] for _ in range(n)]
    if negatives is not None:
        negatives = [unit(v) for v in negatives.tolist()]
        for i in range(n):
            for j in range(n):
                if negative_groups is None or negative_groups[j] != groups[i]:
                    negative_sim[i].append(scale * sum(a * b for a, b in zip(image[i], negatives[j])))

    def kept(i, j):  # column j stays in row i's softmax unless it repeats row i's caption
        return j == i or groups is None or groups[j] != groups[i]

    image_to_text = text_to_image = 0.0
    for i in range(n):
        row = [sim[i][j] for j in range(n) if kept(i, j)] + negative_sim[i]  # image i against texts
        image_to_text += math.log(sum(math.exp(x) for x in row)) - sim[i][i]
        column = [sim[j][i] for j in range(n) if kept(i, j)]  # text i against images
        text_to_image += math.log(sum(math.exp(x) for x in column)) - sim[i][i]
    return (image_to_text / n + text_to_image / n) / 2


@pytest.mark.parametrize("scale", [1.0, 14.3])
@pytest.mark.parametrize("groups", [None, [0, 1, 0, 2, 3, 1, 0]])
def test_matches_hand_computation(scale, groups):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(7, 5, generator=g, dtype=torch.float64)
    text = torch.randn(7, 5, generator=g, dtype=torch.float64)
    text_groups = None if groups is None else torch.tensor(groups)
    got = clip_loss(image, text, torch.tensor(math.log(scale), dtype=torch.float64), text_groups)
    assert got.item() == pytest.approx(_hand_loss(image, text, scale, groups), rel=1e-12)
    as_module = ClipLoss()(image, text, torch.tensor(math.log(scale)), text_groups)
    assert as_module.item() == pytest.approx(got.item(), rel=1e-6)
    if groups is not None:  # the mask matters: the unmasked loss is different
        unmasked = clip_loss(image, text, torch.tensor(math.log(scale))).item()
        assert unmasked != pytest.approx(got.item(), rel=1e-3)


@pytest.mark.parametrize("masked", [False, True])
def test_hard_negatives_match_hand_computation(masked):
    g = torch.Generator().manual_seed(1)
    image, text, negatives = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    groups = [10, 11, 12, 13, 14, 15]
    negative_groups = [20, 11, 21, 10, 22, 15] if masked else None  # 1 and 5: unchanged; 3: image 0's text
    log_scale = torch.tensor(math.log(14.3), dtype=torch.float64)
    got = clip_loss(
        image,
        text,
        log_scale,
        torch.tensor(groups),
        negative_features=negatives,
        negative_groups=None if negative_groups is None else torch.tensor(negative_groups),
    )
    want = _hand_loss(image, text, 14.3, groups, negatives, negative_groups)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert got.item() > clip_loss(image, text, log_scale, torch.tensor(groups)).item()  # more to tell apart


def test_hard_negative_that_matches_its_image_costs_more():
    # A negative almost as close to image 0 as its own caption costs log(1 + e^-0.6) / 6; a far one nothing.
    e = torch.eye(3)
    image, text = e.clone(), e.clone()
    log_scale = torch.tensor(math.log(100.0))
    near = torch.stack([e[0] * 0.9 + e[1] * 0.1, -e[1], -e[2]])
    far = -e
    assert clip_loss(image, text, log_scale, negative_features=near).item() == pytest.approx(
        math.log1p(math.exp(100 * (0.9 / math.sqrt(0.82) - 1))) / 6, rel=1e-3
    )
    assert clip_loss(image, text, log_scale, negative_features=far) < 1e-3


def test_hard_negatives_bad_shapes_are_rejected():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"must be \(m, 3\)"):
        clip_loss(x, x, torch.tensor(0.0), negative_features=torch.randn(3, 2))
    with pytest.raises(ValueError, match="negative_groups needs"):
        clip_loss(x, x, torch.tensor(0.0), negative_groups=torch.arange(4))


def test_duplicate_captions_are_not_negatives_in_either_direction():
    # Images 0 and 1 share one caption; a perfect model embeds both images on that caption.
    e = torch.eye(4)
    image = torch.stack([e[0], e[0], e[2], e[3]])
    text = torch.stack([e[0], e[0], e[2], e[3]])
    log_scale = torch.tensor(math.log(100.0))
    # Unmasked, rows 0 and 1 split their probability between two equal columns: ln 2 each, in both
    # directions. Masking only one direction would leave ln 2 / 4, so 0 shows both are masked.
    assert clip_loss(image, text, log_scale).item() == pytest.approx(2 * math.log(2) / 4, rel=1e-4)
    masked = clip_loss(image, text, log_scale, torch.tensor([7, 7, 8, 9])).item()
    assert masked == pytest.approx(0.0, abs=1e-6)
    # Gradients through -inf entries stay finite.
    image.requires_grad_(True)
    clip_loss(image, text + 0.1, log_scale, torch.tensor([7, 7, 8, 9])).backward()
    assert torch.isfinite(image.grad).all()


def test_matches_transformers_clip_loss():
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    log_scale = torch.tensor(math.log(1 / 0.07))
    i, t = torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1)
    expected = image_text_contrastive_loss(log_scale.exp() * t @ i.T)  # transformers takes logits_per_text
    assert clip_loss(image, text, log_scale).item() == pytest.approx(expected.item(), rel=1e-6)

    # And CLIPModel's own loss from its forward pass (tiny random model, nothing downloaded).
    torch.manual_seed(0)
    model = CLIPModel(
        CLIPConfig(
            text_config=dict(
                vocab_size=50,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=16,
            ),
            vision_config=dict(
                image_size=32,
                patch_size=16,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=1,
                num_attention_heads=2,
            ),
            projection_dim=16,
        )
    ).eval()
    out = model(
        input_ids=torch.randint(0, 50, (5, 9)), pixel_values=torch.randn(5, 3, 32, 32), return_loss=True
    )
    ours = clip_loss(out.image_embeds, out.text_embeds, model.logit_scale)
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_random_features_give_chance_and_aligned_features_give_zero():
    g = torch.Generator().manual_seed(2)
    n = 64
    assert chance_loss(n) == math.log(n)
    assert chance_loss(n, 3) == pytest.approx((math.log(n) + math.log(4 * n)) / 2)
    random_image, random_text = torch.randn(n, 32, generator=g), torch.randn(n, 32, generator=g)
    random_loss = clip_loss(random_image, random_text, torch.tensor(0.0))
    assert random_loss.item() == pytest.approx(chance_loss(n), abs=0.1)
    negatives = torch.randn(3 * n, 32, generator=g)  # three hard negatives per caption
    with_negatives = clip_loss(random_image, random_text, torch.tensor(0.0), negative_features=negatives)
    assert with_negatives.item() == pytest.approx(chance_loss(n, 3), abs=0.1)
    aligned = torch.randn(n, 32, generator=g)
    assert clip_loss(aligned, 3 * aligned, torch.tensor(MAX_LOGIT_SCALE)).item() < 1e-3


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3), torch.tensor(0.0))
    with pytest.raises(ValueError, match="text_groups"):
        clip_loss(torch.randn(4, 3), torch.randn(4, 3), torch.tensor(0.0), torch.tensor([0, 1]))


def test_clamp_logit_scale():
    high, ok = torch.nn.Parameter(torch.tensor(5.0)), torch.nn.Parameter(torch.tensor(2.0))
    clamp_logit_scale_(high), clamp_logit_scale_(ok)
    assert high.item() == pytest.approx(math.log(100)) and ok.item() == 2.0
    assert high.requires_grad


# ---- gradient equivalence across processes (gloo, 2 CPU processes) ----------------------------------

N, WORLD = 8, 2
GROUPS = torch.tensor([0, 1, 2, 0, 0, 1, 4, 2])  # duplicates within rank 0 (0, 3) and across ranks (1, 5)


def _batch():
    g = torch.Generator().manual_seed(3)
    x_image = torch.randn(N, 6, generator=g, dtype=torch.float64)
    x_text = torch.randn(5, 4, generator=g, dtype=torch.float64)[GROUPS]  # same caption -> same text input
    return x_image, x_text


def _grads(x_image, x_text, groups):
    """Loss and the gradients of a tiny two-tower model (same seed -> same weights in every process)."""
    torch.manual_seed(0)
    image_tower = torch.nn.Linear(6, 3).double()
    text_tower = torch.nn.Linear(4, 3).double()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))
    loss = clip_loss(image_tower(x_image), text_tower(x_text), logit_scale, groups)
    loss.backward()
    params = [*image_tower.parameters(), *text_tower.parameters(), logit_scale]
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in params])


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x_image, x_text = _batch()
        local = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        results, autograd_gather = {}, cl._all_gather
        for gather in ("autograd", "plain"):  # "plain": the same loss with dist.all_gather into buffers
            cl._all_gather = autograd_gather if gather == "autograd" else cl._all_gather_no_grad
            for name, groups in (("none", None), ("groups", GROUPS[local])):
                loss, grad = _grads(x_image[local], x_text[local], groups)
                for t in (loss, grad):  # what DDP does: average over ranks
                    dist.all_reduce(t)
                    t /= WORLD
                results[gather, name] = (loss, grad)
        try:
            clip_loss(torch.randn(3 + rank, 3), torch.randn(3 + rank, 3), torch.tensor(0.0))
        except ValueError as error:
            results["unequal"] = str(error)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_gives_single_process_gradients(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x_image, x_text = _batch()
    for name, groups in (("none", None), ("groups", GROUPS)):
        loss, grad = _grads(x_image, x_text, groups)  # one process, whole batch
        ddp_loss, ddp_grad = results[0]["autograd", name]
        ratio = (ddp_grad.norm() / grad.norm()).item()
        print(f"{name}: |grad 2 procs| / |grad 1 proc| = {ratio:.6f}")
        assert ddp_loss.item() == pytest.approx(loss.item(), rel=1e-12)
        assert ((ddp_grad - grad).norm() / grad.norm()).item() < 1e-6
        assert ratio == pytest.approx(1.0, abs=1e-6)
        # A plain all_gather: same loss value, but other ranks' terms never reach this rank's towers.
        plain_loss, plain_grad = results[0]["plain", name]
        plain_error = ((plain_grad - grad).norm() / grad.norm()).item()
        print(f"{name}: plain all_gather relative gradient error = {plain_error:.3f}")
        assert plain_loss.item() == pytest.approx(loss.item(), rel=1e-12)
        assert plain_error > 0.05
    assert results[0]["unequal"] == results[1]["unequal"]
    assert "equal batch sizes" in results[0]["unequal"] and "[3, 4]" in results[0]["unequal"]
