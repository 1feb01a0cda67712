"""The two networks: shapes, gated attention that sums to the count, masking."""
from __future__ import annotations

import pytest
import torch

from pvsquant.errors import InputImageError
from pvsquant.models import (
    CountCNN,
    GPUnet,
    Weights,
    build_model,
    conv_of_parts,
    load_weights,
    network_width,
    pad_to_multiple,
    save_weights,
)


@pytest.fixture()
def batch():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 20, 16)  # T2, vesselness, region
    mask = torch.zeros(2, 1, 24, 20, 16)
    mask[:, :, 4:20, 4:16, 2:14] = 1
    return x, mask


def test_gpunet_count_is_the_sum_of_its_attention_in_the_mask(batch):
    x, mask = batch
    count, attention = GPUnet(width=4).eval()(x, mask)
    assert count.shape == (2,) and attention.shape == (2, 1, 24, 20, 16)
    torch.testing.assert_close(count, (attention * mask).sum(dim=(1, 2, 3, 4)))
    # Nothing outside the mask is counted.
    far = x.clone()
    far[:, :, :2] = 1.0
    count_far, _ = GPUnet(width=4).eval()(far, torch.zeros_like(mask))
    assert torch.all(count_far == 0)


def test_gpunet_attention_is_gated(batch):
    """Where the gate is shut the map is exactly zero, whatever the output layer says: the map
    cannot hold negative values that cancel positive ones elsewhere."""
    x, mask = batch
    model = GPUnet(width=4).eval()
    with torch.no_grad():
        model.output.bias.fill_(-5.0)  # a strongly negative mass everywhere
        model.segment.weight.zero_()
        model.segment.bias.fill_(-60.0)  # gate shut
        count, attention = model(x, mask)
        assert torch.all(attention.abs() < 1e-20) and torch.all(count.abs() < 1e-15)
        model.segment.bias.fill_(60.0)  # gate open: the map is the linear mass read-out
        count, attention = model(x, mask)
        torch.testing.assert_close(attention, torch.full_like(attention, -5.0 * model.scale) +
                                   model.scale * torch.einsum("bcxyz,c->bxyz", model.last_features,
                                                              model.output.weight[0]).unsqueeze(1))


def test_gpunet_count_is_linear_in_its_head_features(batch):
    """Fine-tuning re-fits the output layer as a linear regression on head_features: that must
    reproduce the count exactly, gate included."""
    from pvsquant.models import get_head, head_features

    x, mask = batch
    model = GPUnet(width=4).eval()
    with torch.no_grad():
        count, _ = model(x, mask)
        features = head_features(model, x, mask)
    torch.testing.assert_close(features @ get_head(model), count, rtol=1e-4, atol=1e-5)


def test_cnn_counts_from_pooled_features(batch):
    x, mask = batch
    model = CountCNN(width=4).eval()
    count, contribution = model(x, mask)
    assert count.shape == (2,) and contribution.shape == (2, 1, 12, 10, 8)
    pooled = torch.nn.functional.max_pool3d(mask, 2)
    torch.testing.assert_close(count, (contribution * pooled).sum(dim=(1, 2, 3, 4)))
    # Counting is additive: splitting the mask splits the count.
    half = mask.clone()
    half[:, :, 12:] = 0
    rest = mask - half
    total = model(x, half)[0] + model(x, rest)[0]
    torch.testing.assert_close(total, count, rtol=1e-4, atol=1e-4)


def test_cnn_encoder_is_the_gpunet_encoder():
    cnn, unet = build_model("cnn", 8), build_model("gpunet", 8)
    enc_cnn = {k: v.shape for k, v in cnn.state_dict().items() if k.startswith("encoder.")}
    enc_unet = {k: v.shape for k, v in unet.state_dict().items() if k.startswith("encoder.")}
    assert enc_cnn == enc_unet and enc_cnn


def test_convolving_parts_is_convolving_their_concatenation():
    """The networks never build their skip connections' concatenations: a block applied to a
    list of channel blocks gives what it gives on their concatenation (to rounding), and a
    list of the wrong number of channels is refused."""
    torch.manual_seed(1)
    network = GPUnet(width=4)
    parts = [torch.randn(2, 8, 8, 8, 6), torch.randn(2, 4, 8, 8, 6), torch.randn(2, 3, 8, 8, 6)]
    with torch.no_grad():
        joined = network.up1(torch.cat(parts, 1))
        split = conv_of_parts(network.up1, parts)
    assert split.shape == joined.shape
    assert torch.allclose(split, joined, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="parts of 12 channels"):
        conv_of_parts(network.up1, parts[:2])


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown model"):
        build_model("resnet")


def test_pad_to_multiple():
    x = torch.zeros(1, 1, 13, 16, 7)
    padded, size = pad_to_multiple(x, 4)
    assert padded.shape[2:] == (16, 16, 8) and size == (13, 16, 7)


@pytest.mark.parametrize("name", ["gpunet", "cnn"])
def test_weights_round_trip(name, tmp_path):
    network = build_model(name, width=4, in_channels=3)
    path = save_weights(network, tmp_path / f"basal_ganglia_{name}.pt", name, "basal_ganglia", {"steps": 7})
    weights = load_weights(path)
    assert isinstance(weights, Weights) and (weights.model, weights.region, weights.info) == (name, "basal_ganglia",
                                                                                                {"steps": 7})
    assert weights.in_channels == 3 and network_width(weights.network) == 4 and weights.source == str(path)
    assert len(weights.sha256) == 12 and not weights.network.training
    for key, value in network.state_dict().items():
        assert torch.equal(weights.network.state_dict()[key], value)


def test_load_weights_names_a_bad_file(tmp_path):
    bad = tmp_path / "hippocampi_cnn.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputImageError, match=r"hippocampi_cnn\.pt: not pvsquant weights"):
        load_weights(bad)
