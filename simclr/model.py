"""The SimCLR model: an encoder f (a ResNet without its classifier) and a projection head g;
and the network that fine-tuning trains, the encoder under a new classifier.

    x --f--> h (the representation used downstream) --g--> z (the input of NT-Xent)
    x --f--> h [--g's first layer: Linear, BN, ReLU--> g1(h)] --classifier--> logits

build_model makes the first from a run's settings (the flags of simclr.train, saved in its
checkpoint), build_finetune_model the second; check_stem refuses a checkpoint whose first
convolution does not fit the images it is given.
"""
import numbers

import numpy

import nn
from autograd import no_grad
from nn import init
from simclr.cli import UsageError

ARCHITECTURES = {"resnet18": nn.resnet18, "resnet34": nn.resnet34, "resnet50": nn.resnet50}
HEADS = ("nonlinear", "linear", "none")


def dense(in_features, out_features, rng=None):
    """A Linear layer as the official code starts its dense layers: weights N(0, 0.01^2), biases
    0 (the projection head's, and fine-tuning's new classifier)."""
    rng = init.as_generator(rng)
    layer = nn.Linear(in_features, out_features, rng=rng)
    init.normal_(layer.weight, 0.0, 0.01, rng)
    init.zeros_(layer.bias)
    return layer


def projection_head(kind, in_features, proj_dim=128, rng=None):
    """The paper's head variants (section 4.2): "nonlinear" (v1: Linear -> BN -> ReLU -> Linear),
    "linear" (one Linear) or "none" (z = h). Dense weights start as N(0, 0.01^2) and biases at
    0, as in the official code. (The official v1 code also ends with a BN without beta; we follow
    the paper's figure and omit it.)"""
    rng = init.as_generator(rng)
    if kind == "nonlinear":
        return nn.Sequential(dense(in_features, in_features, rng), nn.BatchNorm1d(in_features),
                             nn.ReLU(), dense(in_features, proj_dim, rng))
    if kind == "linear":
        return dense(in_features, proj_dim, rng)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown projection head {kind!r}: expected one of {', '.join(HEADS)}")


class SimCLR(nn.Module):
    """encoder: a module mapping images (N, 3, H, W) to representations h (N, D), with the
    attribute `num_features` = D (as nn.ResNet has); `forward` returns the projections z."""

    def __init__(self, encoder, head="nonlinear", proj_dim=128, rng=None):
        super().__init__()
        self.encoder = encoder
        if not hasattr(encoder, "num_features"):
            raise TypeError(f"the encoder ({type(encoder).__name__}) must say the size of its "
                            f"output in an attribute num_features, as nn.ResNet does")
        if isinstance(proj_dim, bool) or not isinstance(proj_dim, numbers.Integral) or proj_dim < 1:
            raise ValueError(f"proj_dim must be a positive int, got {proj_dim!r}")
        self.head = projection_head(head, encoder.num_features, proj_dim, rng)

    def forward(self, x):
        return self.head(self.encoder(x))


def build_model(config, image_size):
    """The SimCLR model of a run's settings (config: arch, width, cifar_stem, head, proj_dim,
    seed) for images of `image_size` px: the CIFAR stem at 32 px and below unless cifar_stem
    says otherwise, weights drawn from (seed, 0), each block's last batch-norm scale at zero."""
    cifar_stem = config["cifar_stem"]
    if cifar_stem is None:
        cifar_stem = image_size <= 32
    rng = numpy.random.default_rng([config["seed"], 0])
    width = int(config["width"]) if float(config["width"]).is_integer() else config["width"]
    encoder = ARCHITECTURES[config["arch"]](cifar_stem=cifar_stem, width=width,
                                            zero_init_residual=True, rng=rng)
    return SimCLR(encoder, head=config["head"], proj_dim=config["proj_dim"], rng=rng)


STEMS = {3: "the CIFAR stem (a 3x3 first convolution, no max-pool)",
         7: "the ImageNet stem (a 7x7 stride-2 first convolution and a max-pool)"}


def check_stem(model, model_state, meta_config, image_size, path):
    """Refuse a checkpoint whose first convolution (the stem) is not the one that images of
    `image_size` px take (the CIFAR stem at 32 px and below): its weights cannot load into this
    model, and its encoder was trained on images of another size."""
    key = "encoder.conv1.weight"
    trained, wanted = model_state[key].shape[-1], model.state_dict()[key].shape[-1]
    if trained == wanted:
        return
    size = meta_config.get("image_size") or \
        (32 if meta_config.get("dataset") in ("cifar10", "synthetic") else None)
    images = f"{size}x{size} images" if size else "images of another size"
    hint = f"evaluate at that size (--image-size {size})" if size else \
        "evaluate on images of its training size (--image-size)"
    raise UsageError(f"--checkpoint {path} was trained on {images}, with {STEMS[trained]}; "
                     f"these {image_size}x{image_size} images take {STEMS[wanted]}: {hint}")


STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # the encoder's stages, input first


class FineTuneNet(nn.Module):
    """encoder (an nn.ResNet) -> head_layer (a module, or None for none) -> a new Linear
    classifier to num_classes; the stages up to freeze_until (one of STAGES, or None) frozen.

    The optional head layer is SimCLRv2's ft_proj_selector = 1: fine-tuning "from the middle of
    the projection head" (v2 found it better than from h with few labels). The classifier is
    new, started as the official code starts its dense layers (N(0, 0.01^2), bias 0).

    Freezing: the stages of the encoder up to and including freeze_until (stem, layer1, ...,
    layer4) run under no_grad() in evaluation mode (their batch norm uses and keeps its running
    statistics), and the optimiser does not hold their parameters: nothing of theirs changes.
    That is the official fine_tune_after_block: 0 freezes the stem, k the stem and block groups
    1..k, 4 the whole encoder, -1 (its default, and ours: no --freeze-until) nothing. The TF1
    code stops the gradient there but keeps those batch norms in training mode (their moving
    averages move); the TF2 code (SimCLRv2) makes them non-trainable, so in inference mode, as
    here. Everything that is not frozen trains as in pre-training: batch norm in training mode,
    normalising with the batch's statistics and updating its running averages (as the official
    code fine-tunes); evaluation uses the running statistics (evaluation mode)."""

    def __init__(self, encoder, head_layer, num_classes, freeze_until=None, rng=None):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Identity() if head_layer is None else head_layer
        features = encoder.num_features if head_layer is None else head_layer[0].out_features
        self.classifier = dense(features, num_classes, rng)
        count = 0 if freeze_until is None else STAGES.index(freeze_until) + 1
        self.frozen_stages = STAGES[:count]
        self.train()  # the frozen stages in evaluation mode from the start

    def stage_modules(self, name):
        """The modules of an encoder stage."""
        encoder = self.encoder
        return [encoder.conv1, encoder.bn1, encoder.maxpool] if name == "stem" else \
            [getattr(encoder, name)]

    def frozen_modules(self):
        return [module for name in self.frozen_stages for module in self.stage_modules(name)]

    def trainable_parameters(self):
        """(name, parameter) pairs of everything not frozen: what the optimiser updates."""
        frozen = {id(p) for module in self.frozen_modules() for p in module.parameters()}
        return [(name, p) for name, p in self.named_parameters() if id(p) not in frozen]

    def train(self, mode=True):
        """Training mode (batch statistics) everywhere but in the frozen stages."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, x):
        encoder = self.encoder
        for name in STAGES:
            stage = encoder.stem if name == "stem" else getattr(encoder, name)
            if name in self.frozen_stages:
                with no_grad():  # no graph: the frozen stages' output is a constant input
                    x = stage(x)
            else:
                x = stage(x)
        h = encoder.avgpool(x).reshape(x.shape[0], encoder.num_features)
        return self.classifier(self.head(h))


def build_finetune_model(config, image_size, num_classes, pretrained_state=None):
    """The network of a fine-tuning run's settings: the SimCLR model of its pre-training
    settings (config's arch, width, head, ...; random weights from config's seed, exactly as
    build_model draws them), its pre-trained weights loaded when given, cut to the encoder (and
    the head's first layer with --from-head-layer 1), and a classifier drawn from (seed, 3)."""
    model = build_model(config, image_size)
    if pretrained_state is not None:
        model.load_state_dict(pretrained_state)
    head_layer = model.head[0:3] if config["from_head_layer"] == 1 else None  # Linear, BN, ReLU
    rng = numpy.random.default_rng([config["seed"], 3])
    return FineTuneNet(model.encoder, head_layer, num_classes, config["freeze_until"], rng)
