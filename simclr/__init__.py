"""SimCLR: contrastive self-supervised learning of visual representations (Chen et al., 2020).

Read in this order: data/ (images as uint8 arrays), augment/ (two random views of each image),
model.py (encoder + projection head), loss.py (NT-Xent), train.py (the training loop and its
checkpoints), evaluate.py and linear_eval.py (how good the representation is).
"""
from simclr.loss import nt_xent
from simclr.model import SimCLR, projection_head

__all__ = ["SimCLR", "projection_head", "nt_xent"]
