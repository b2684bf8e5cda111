"""SimCLR: contrastive self-supervised learning of visual representations (Chen et al., 2020).

Read in this order: data/ (images as uint8 arrays), augment/ (two random views of each image),
model.py (encoder + projection head), loss.py (NT-Xent), pretraining.py (a training step),
training/ (the loop that repeats it, with its metrics and checkpoints), evaluate.py (how good
the representation is), finetuning.py (training on few labels). The programs (python -m
simclr.train, finetune, linear_eval, figures, experiments) parse and check their flags and call
these; plot/ draws their pictures.
"""
from simclr.loss import nt_xent
from simclr.model import SimCLR, projection_head

__all__ = ["SimCLR", "projection_head", "nt_xent"]
