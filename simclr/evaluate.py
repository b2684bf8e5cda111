"""Measuring a representation: features of a frozen encoder, k-NN and linear classifiers on them.

The encoder is frozen in both: features are computed once, under no_grad(), with batch norm in
evaluation mode (running statistics), so evaluating can never change the encoder (a common bug
in third-party code fine-tunes it and inflates the accuracy).
"""
import numpy

import nn
import nn.functional as F
from autograd import Tensor, no_grad
from autograd.backend import array_module, device_of, scatter_add, to_numpy
from nn.optim import SGD, WarmupCosine
from nn.runtime import parallel


def to_network_input(images, xp):
    """uint8 images (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1] on xp's device."""
    images = xp.asarray(images)
    return images.transpose(0, 3, 1, 2).astype(xp.float32) / xp.float32(255)  # NHWC -> NCHW


def encode(encoder, images, batch_size=256):
    """The representations h = encoder(x) of uint8 images (N, H, W, 3), as a float32 array on the
    encoder's device, computed in eval mode without a graph; the encoder's mode is restored."""
    xp = array_module(next(iter(encoder.parameters())).data)
    was_training = encoder.training
    encoder.eval()
    chunks = []
    try:
        with no_grad():
            for start in range(0, len(images), batch_size):
                x = to_network_input(images[start:start + batch_size], xp)
                chunks.append(encoder(Tensor(x)).data)
    finally:
        encoder.train(was_training)
    return xp.concatenate(chunks)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=200,
                 temperature=0.1, num_classes=None, chunk=1024):
    """Top-1 accuracy of a weighted k-nearest-neighbour vote with cosine similarity.

    Each test point takes its k most similar training points; a neighbour with similarity s votes
    for its class with weight exp(s / temperature) (Wu et al., 2018, the usual SSL monitor).
    """
    xp = array_module(train_features)
    train = train_features / xp.linalg.norm(train_features, axis=1, keepdims=True)
    test = test_features / xp.linalg.norm(test_features, axis=1, keepdims=True)
    train_labels, test_labels = xp.asarray(train_labels), xp.asarray(test_labels)
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk):
        similarity = parallel.matmul(test[start:start + chunk], train.T)    # (n, N_train)
        neighbours = xp.argpartition(-similarity, k - 1, axis=1)[:, :k]     # (n, k)
        weights = xp.exp(xp.take_along_axis(similarity, neighbours, axis=1) / temperature)
        votes = xp.zeros((len(similarity), num_classes), dtype=weights.dtype)
        rows = xp.arange(len(similarity))[:, None].repeat(k, axis=1)
        scatter_add(xp, votes, (rows, train_labels[neighbours]), weights)   # (n, classes)
        correct += int((votes.argmax(axis=1) == test_labels[start:start + chunk]).sum())
    return correct / len(test)


def linear_probe(train_features, train_labels, test_features, test_labels, epochs=100,
                 batch_size=256, lr=None, weight_decay=0.0, seed=0, num_classes=None):
    """Train a multinomial logistic regression on frozen features; return (train, test) top-1.

    Features are standardised with the training set's mean and standard deviation (an affine
    map, so the classifier stays linear in h). Optimiser: our SGD with Nesterov momentum 0.9,
    lr 0.1 * B / 256 (docs/SIMCLR.md, Evaluation) by default, cosine-decayed per step, no
    weight decay.
    """
    xp = array_module(train_features)
    rng = numpy.random.default_rng(seed)
    mean = train_features.mean(axis=0, keepdims=True)
    std = train_features.std(axis=0, keepdims=True) + 1e-6
    train_x = ((train_features - mean) / std).astype(xp.float32)
    test_x = ((test_features - mean) / std).astype(xp.float32)
    train_y = xp.asarray(train_labels)
    num_classes = num_classes or int(to_numpy(train_y).max()) + 1
    classifier = nn.Linear(train_x.shape[1], num_classes, rng=rng).to(device=device_of(train_x))
    steps_per_epoch = max(1, len(train_x) // batch_size)
    optimizer = SGD(classifier.parameters(), lr=0.0, momentum=0.9, nesterov=True,
                    weight_decay=weight_decay)
    schedule = WarmupCosine(lr if lr is not None else 0.1 * batch_size / 256, 0,
                            epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        order = xp.asarray(rng.permutation(len(train_x)))
        for batch in range(steps_per_epoch):
            index = order[batch * batch_size:(batch + 1) * batch_size]
            loss = F.cross_entropy(classifier(Tensor(train_x[index])), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.lr = schedule(step)
            optimizer.step()
            step += 1
    return (_accuracy(classifier, train_x, train_labels), _accuracy(classifier, test_x, test_labels))


def _accuracy(classifier, features, labels):
    xp = array_module(features)
    with no_grad():
        predictions = classifier(Tensor(features)).data.argmax(axis=1)
    return float((predictions == xp.asarray(labels)).mean())

