"""Audio network of SPEC §3: a 1-channel ResNet-18 on the [1, 81, 199] spectrogram + NetVLAD.

Mirrors VGGSound's released model (ResNet-18 trunk, NetVLAD with 16 clusters × 512, output 8192-d
and L2-normalised) so its checkpoint can be loaded; keys are mapped from the usual spellings
(``module.``/``audnet.`` prefixes, ``pool.``/``vlad.`` for the NetVLAD layer, classifier heads
ignored). Without a file the network is randomly initialised and ``source`` says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from sta_models.networks.backbones import RANDOM_INIT, WeightsError, load_into, read_state_dict


class NetVLAD(nn.Module):
    """Soft-assignment VLAD pooling (Arandjelović et al.), as in VGGSound's ``NetVLAD``."""

    def __init__(self, num_clusters: int = 16, dim: int = 512, alpha: float = 1.0) -> None:
        super().__init__()
        self.num_clusters, self.dim, self.alpha = num_clusters, dim, alpha
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))
        with torch.no_grad():
            self.conv.weight.copy_((2.0 * alpha * self.centroids).unsqueeze(-1).unsqueeze(-1))
            assert self.conv.bias is not None  # built with bias=True above
            self.conv.bias.copy_(-alpha * self.centroids.norm(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = F.normalize(x, p=2, dim=1)
        assign = torch.softmax(self.conv(x).view(n, self.num_clusters, -1), dim=1)  # [N, K, P]
        flat = x.view(n, c, -1)  # [N, C, P]
        # Σ_p a_kp (x_p − c_k) = (A·Xᵀ)_k − (Σ_p a_kp) c_k ; avoids the [N, K, C, P] residual tensor
        vlad = torch.bmm(assign, flat.transpose(1, 2)) - assign.sum(-1, keepdim=True) * self.centroids
        vlad = F.normalize(vlad, p=2, dim=2).reshape(n, -1)
        return F.normalize(vlad, p=2, dim=1)


def _vggsound_key(key: str) -> str | None:
    """Map a VGGSound checkpoint key onto :class:`AudioNet` names; None = not part of it."""
    for prefix in ("module.", "audnet.", "audio_net.", "aud_net."):
        key = key.removeprefix(prefix)
    for alias in ("pool.", "vlad.", "net_vlad."):
        if key.startswith(alias):
            key = "netvlad." + key[len(alias):]
    if key.startswith(("fc", "avgpool", "classifier")):
        return None
    return key


class AudioNet(nn.Module):
    """[B, 1, 81, 199] spectrogram → [B, 8192] L2-normalised embedding."""

    def __init__(self, weights: str | Path | None = None, num_clusters: int = 16) -> None:
        super().__init__()
        net = tvm.resnet18(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.netvlad = NetVLAD(num_clusters=num_clusters, dim=512)
        self.out_dim = num_clusters * 512
        self.source = RANDOM_INIT
        if weights:
            path = Path(weights)
            raw = read_state_dict(path, "VGGSound audio")
            state = {}
            for k, v in raw.items():
                mapped = _vggsound_key(k)
                if mapped is not None:
                    state[mapped] = v
            if not state:
                raise WeightsError(f"VGGSound audio weights file {path} holds no audio-network tensors")
            load_into(self, state, path, "VGGSound audio", ignore_prefixes=("visnet.", "vis"))
            self.source = f"file:{path}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.netvlad(x)
