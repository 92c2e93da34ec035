"""Self-supervised training of the animation model: data, random warps, losses, the loop, evaluation."""
