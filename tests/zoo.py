"""The model families the core tests hold to the issue's guarantees, and random masks over their groups."""

import torch

from compressor.graph import PruningGraph

NUM_CLASSES = 10
TV_SHAPE = (3, 64, 64)
MODELS = [
    ("torchvision:resnet18", TV_SHAPE),
    ("torchvision:mobilenet_v2", TV_SHAPE),
    ("torchvision:efficientnet_b0", TV_SHAPE),
    ("torchvision:googlenet", TV_SHAPE),  # concat
    ("torchvision:densenet121", TV_SHAPE),  # concat
    ("torchvision:shufflenet_v2_x0_5", TV_SHAPE),
    ("torchvision:regnet_x_400mf", TV_SHAPE),  # grouped convolutions  # chunk + channel shuffle (beyond Torch-Pruning)
    ("cifar:resnet20", (1, 28, 28)),
    ("cifar:vgg16", (3, 32, 32)),
]
MAX_RATIO = 0.8  # solve_counts' default


def random_masks(graph: PruningGraph, seed: int, max_ratio: float = MAX_RATIO) -> dict[int, torch.Tensor]:
    """Random masks whose kept counts are allowed (rounding, max ratio): what any method may produce."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for g in graph.groups:
        allowed = graph.allowed_keep(g.id, max_ratio)
        k = allowed[int(torch.randint(len(allowed), (1,), generator=gen))]
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[torch.randperm(g.size, generator=gen)[:k]] = True
        masks[g.id] = mask
    return masks
