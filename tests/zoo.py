"""The model families the core tests hold to the issue's guarantees (one list for every core test)."""

NUM_CLASSES = 10
TV_SHAPE = (3, 64, 64)
MODELS = [
    ("torchvision:resnet18", TV_SHAPE),
    ("torchvision:mobilenet_v2", TV_SHAPE),
    ("torchvision:efficientnet_b0", TV_SHAPE),
    ("torchvision:googlenet", TV_SHAPE),  # concat
    ("torchvision:densenet121", TV_SHAPE),  # concat
    ("cifar:resnet20", (1, 28, 28)),
    ("cifar:vgg16", (3, 32, 32)),
]
