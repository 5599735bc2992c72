"""Muon: the orthogonalised kernel step, the fixed kernel norm, and torch's SGD for every other group."""

import pytest
import torch
from torch import nn

from image_classifier.config import parse_config
from image_classifier.optim import build_optimizer
from image_classifier.models import create_model
from image_classifier.optim import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(16, 144), (144, 16), (32, 32)])
def test_orthogonalize_pushes_every_singular_value_towards_one(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))     # singular values 100x apart
    before = torch.linalg.svdvals(g) / torch.linalg.svdvals(g).max()
    singular = torch.linalg.svdvals(orthogonalize(g, steps=5))                     # both descending
    assert singular.max() < 1.3 and (singular[before > 0.05] > 0.5).all(), singular
    # A polynomial in G G^T times G keeps the singular directions: U^T O V is diagonal and positive.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ orthogonalize(g, steps=5) @ vh.T
    torch.testing.assert_close(core, torch.diag(core.diagonal()), atol=1e-4, rtol=0)
    assert (core.diagonal() > 0).all()


def test_muon_holds_the_kernel_norm_and_matches_torch_sgd_elsewhere():
    torch.manual_seed(0)
    conv, head = nn.Conv2d(3, 8, 3, bias=True), nn.Linear(8, 4)
    reference = nn.Linear(8, 4)
    reference.load_state_dict(head.state_dict())
    muon = Muon([{"params": [conv.weight], "lr": 0.1, "momentum": 0.6, "use_muon": True},
                 {"params": [conv.bias, *head.parameters()], "weight_decay": 1e-3}], lr=0.5, momentum=0.85)
    sgd = torch.optim.SGD([{"params": list(reference.parameters()), "weight_decay": 1e-3}], lr=0.5, momentum=0.85,
                          nesterov=True)
    before = conv.weight.detach().clone()
    x = torch.randn(16, 3, 6, 6)
    for _ in range(3):
        features = conv(x).amax((2, 3))
        for model, optimizer in ((head, muon), (reference, sgd)):
            optimizer.zero_grad()
            model(features.detach()).square().mean().backward(retain_graph=True)
        conv(x).square().mean().backward()
        muon.step()
        sgd.step()
    assert not torch.equal(conv.weight, before)
    for mine, theirs in zip(head.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)
    muon.param_groups[0]["lr"] = 0.0                       # a step that only renormalises: ||W|| = sqrt(C_out)
    muon.step()
    torch.testing.assert_close(conv.weight.norm(), torch.tensor(8 ** 0.5))
    with pytest.raises(ValueError, match="not biases"):
        Muon([{"params": [conv.bias], "use_muon": True}], lr=0.1)


def test_build_optimizer_muon_takes_the_kernels_and_leaves_the_rest_to_sgd():
    model = create_model("cnn-fast", class_names=list("abc"), num_channels=3, image_size=32)
    args = parse_config(["--dataset", "x"]).train
    assert args.optimizer == "muon"
    optimizer = build_optimizer(model, args)
    muon, *rest = optimizer.param_groups
    assert muon["use_muon"] and muon["lr"] == args.learning_rate and all(p.ndim == 4 for p in muon["params"])
    assert len(muon["params"]) == 6                           # the stem's fixed whitening kernel is not trained
    assert not any(g["use_muon"] for g in rest) and {g["lr"] for g in rest} == {
        args.sgd_learning_rate, args.sgd_learning_rate * args.bias_learning_rate_scale}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert sorted(id(p) for g in optimizer.param_groups for p in g["params"]) == sorted(trainable)
