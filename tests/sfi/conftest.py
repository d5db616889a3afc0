"""Small real torch models for the SFI tests: a residual CNN (in-place ReLU, shortcuts, avg-pool, linear)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# Small models: one thread is as fast and does not fight the other test processes on a shared CI machine.
torch.set_num_threads(1)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, in_ch: int = 3, classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Give batch norms non-trivial statistics, as a trained model has."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.fixture
def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    m = TinyResNet()
    randomise_bn(m, torch.Generator().manual_seed(1))
    return m.eval()


@pytest.fixture
def tiny_images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, 10, (12,), generator=g)


def trained_digits_smallnet(folder):
    """A real checkpoint folder (digits smallnet, width 4: its first layer has 36 weights), trained for 60 steps
    so outcomes are not trivial; returns (folder, model in eval mode)."""
    from diehardlab.hardening.checkpoint import save_config, save_model
    from diehardlab.hardening.data import load_dataset
    from diehardlab.hardening.models import ModelConfig, build_model

    torch.manual_seed(0)
    ds = load_dataset("digits", "train")
    cfg = ModelConfig(arch="smallnet", width=4)
    model = build_model(cfg, 1, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):
        idx = torch.randint(0, len(ds), (64,))
        loss = torch.nn.functional.cross_entropy(model(ds.x[idx]), ds.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_config(folder, {"model": cfg.to_dict(), "dataset": "digits", "in_channels": 1, "num_classes": 10, "seed": 0})
    save_model(folder, model.eval())
    return folder, model.eval()
