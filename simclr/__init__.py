"""SimCLR: contrastive self-supervised learning of visual representations."""
