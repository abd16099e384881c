import torch
from torch import nn

from models.cnn import conv_bn_relu


class FashionCNN(nn.Module):
    """28 -> 14 -> 7, then a linear classifier over the 7x7 feature map. The first convolution is
    the only one at full resolution, and a narrow one: that is where the cost of a small CNN on
    a CPU goes. Input [N, 1, 28, 28] in [0, 1], light on dark."""

    def __init__(self, num_classes: int = 10, width: int = 16, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
            conv_bn_relu(4 * width, 4 * width),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width * 7 * 7, num_classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))
