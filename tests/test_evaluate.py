"""The two measures behind every reported accuracy (simclr/evaluate.py), on made-up features
whose answer is known by construction, and against PyTorch written independently.

k-NN: each test point takes its k most similar training points by cosine similarity, and each
votes for its class with weight exp(similarity / temperature). The linear probe: a multinomial
logistic regression on standardised features, returning (train, test) top-1.
"""
import numpy
import pytest

from helpers import import_torch
from simclr.evaluate import knn_accuracy, linear_probe


def on_circle(angles):
    """Unit vectors (cos a, sin a) of the angles (in radians): cosine similarity between two of
    them is the cosine of the angle between them."""
    angles = numpy.asarray(angles, dtype="float64")
    return numpy.stack([numpy.cos(angles), numpy.sin(angles)], axis=1)


def clusters(rng, per_class, centres, spread):
    """Gaussian clouds of `per_class` points around each row of `centres`: (features, labels)."""
    centres = numpy.asarray(centres, dtype="float64")
    labels = numpy.repeat(numpy.arange(len(centres)), per_class)
    return centres[labels] + spread * rng.standard_normal((len(labels), centres.shape[1])), labels


def predicted_counts(measure, test_features, classes):
    """How many test points `measure(test_features, labels)` assigns to each class, read from
    accuracies alone: against labels that are all class c, the accuracy is the share predicted
    c."""
    return [round(measure(test_features, numpy.full(len(test_features), c)) * len(test_features))
            for c in range(classes)]


# ----- k-NN -----------------------------------------------------------------------------------

# Five training points around a query at angle 0 (similarity cos(angle)), worked by hand:
#   point   angle   class   similarity   exp(s / 0.1)   exp(s / 0.01)
#   A        0.00     0      1.0000       22026          2.7e43
#   B        0.30     1      0.9553       14076          3.0e41
#   C       -0.35     1      0.9394       12010          5.4e40
#   D        2.00     0     -0.4161       0.0156         ~0
#   E        2.50     1     -0.8011       0.0003         ~0
TRAIN_ANGLES, TRAIN_CLASSES = [0.0, 0.3, -0.35, 2.0, 2.5], [0, 1, 1, 0, 1]


@pytest.mark.parametrize("k, temperature, winner", [
    (1, 0.1, 0),    # A alone (the least similar alone, E, is class 1)
    (3, 0.1, 1),    # A, B, C: class 1 has 14076 + 12010 = 26086 > 22026
    (3, 0.01, 0),   # the same three, a colder vote: A's 2.7e43 outweighs 3.5e41
    (5, 0.1, 1),    # all five: D and E add almost nothing
])
def test_knn_vote_worked_by_hand(xp, k, temperature, winner):
    train = on_circle(TRAIN_ANGLES)
    query = on_circle([0.0])
    for labels, right in ((winner, 1.0), (1 - winner, 0.0)):
        accuracy = knn_accuracy(xp.asarray(train), xp.asarray(TRAIN_CLASSES), xp.asarray(query),
                                xp.asarray([labels]), k=k, temperature=temperature)
        assert accuracy == right, (k, temperature, labels)


def test_knn_is_cosine_so_the_length_of_a_feature_does_not_matter(xp):
    """Stretching every training point by its own factor moves none of the similarities: the
    answers of the vote worked by hand stay (a Euclidean or unnormalised vote would pick D,
    stretched 50 times, or shrink A out of reach)."""
    lengths = numpy.array([0.02, 1.0, 3.0, 50.0, 7.0])[:, None]
    train = xp.asarray(on_circle(TRAIN_ANGLES) * lengths)
    query = xp.asarray(on_circle([0.0]) * 4.0)
    for k, temperature, winner in ((1, 0.1, 0), (3, 0.1, 1), (3, 0.01, 0)):
        assert knn_accuracy(train, xp.asarray(TRAIN_CLASSES), query, xp.asarray([winner]), k=k,
                            temperature=temperature) == 1.0


def test_knn_a_tied_vote_goes_to_the_lowest_class_index(xp):
    """Two neighbours at exactly the same similarity, one of each class, cast equal votes; the
    vote's argmax takes the first class, whatever order the training points come in."""
    train = xp.asarray(on_circle([0.5, -0.5, 3.0]))  # cos(0.5) twice; the third is far
    query = xp.asarray(on_circle([0.0]))
    for labels in ([1, 0, 1], [0, 1, 1]):
        assert knn_accuracy(train, xp.asarray(labels), query, xp.asarray([0]), k=2) == 1.0


def test_knn_separable_clusters_are_all_right_and_shuffled_labels_at_chance(xp):
    rng = numpy.random.default_rng(0)
    centres = numpy.eye(4) * 5.0
    train, train_labels = clusters(rng, 30, centres, 0.5)
    test, test_labels = clusters(rng, 25, centres, 0.5)
    args = (xp.asarray(train), xp.asarray(train_labels), xp.asarray(test))
    assert knn_accuracy(*args, xp.asarray(test_labels), k=10) == 1.0
    wrong = (test_labels + 1) % 4       # every test label another cluster's
    assert knn_accuracy(*args, xp.asarray(wrong), k=10) == 0.0
    # every point is counted once, whatever the chunks: 100 test points in chunks of 7
    assert knn_accuracy(*args, xp.asarray(test_labels), k=10, chunk=7) == 1.0


def test_knn_with_more_neighbours_than_training_points_takes_them_all(xp):
    train = xp.asarray(on_circle(TRAIN_ANGLES))
    query = xp.asarray(on_circle([0.0]))
    assert knn_accuracy(train, xp.asarray(TRAIN_CLASSES), query, xp.asarray([1]), k=200) == 1.0


def knn_by_torch(train, train_labels, test, k, temperature, classes):
    """The k-NN vote written again in PyTorch (float64): topk of the cosine similarities,
    exp(s / temperature) added into each neighbour's class, the class of the largest sum."""
    torch = import_torch()
    train, test = (torch.nn.functional.normalize(torch.from_numpy(a), dim=1) for a in (train, test))
    similarity, index = (test @ train.T).topk(k, dim=1)           # (n, k) each
    labels = torch.from_numpy(train_labels)[index]                # (n, k)
    votes = torch.zeros(len(test), classes, dtype=torch.float64)
    votes.scatter_add_(1, labels, (similarity / temperature).exp())
    return votes.argmax(dim=1).numpy()


def test_knn_equals_an_independent_pytorch_vote_on_overlapping_clusters():
    rng = numpy.random.default_rng(1)
    centres = rng.standard_normal((5, 16))
    train, train_labels = clusters(rng, 40, centres, 1.5)
    test, test_labels = clusters(rng, 20, centres, 1.5)
    for k, temperature in ((20, 0.1), (7, 0.5)):
        expected = knn_by_torch(train, train_labels, test, k, temperature, 5)
        assert 0.3 < (expected == test_labels).mean() < 0.95  # a test that can tell votes apart

        def ours(features, labels):
            return knn_accuracy(train, train_labels, features, labels, k=k,
                                temperature=temperature, num_classes=5, chunk=32)
        assert ours(test, test_labels) == (expected == test_labels).mean()
        assert predicted_counts(ours, test, 5) == numpy.bincount(expected, minlength=5).tolist()


# ----- the linear probe -----------------------------------------------------------------------

def test_probe_separable_clusters_are_all_right_and_it_returns_train_then_test(xp):
    """Test points drawn from the training clusters, labelled as the next cluster: the probe
    is right on every training point and wrong on every test point, so (train, test) is
    (1, 0), and the swapped pair would be (0, 1)."""
    rng = numpy.random.default_rng(2)
    centres = numpy.eye(3) * 4.0
    train, train_labels = clusters(rng, 40, centres, 0.5)
    test, test_labels = clusters(rng, 10, centres, 0.5)
    result = linear_probe(xp.asarray(train), xp.asarray(train_labels), xp.asarray(test),
                          xp.asarray((test_labels + 1) % 3), epochs=30, batch_size=40)
    assert result == (1.0, 0.0)
    result = linear_probe(xp.asarray(train), xp.asarray(train_labels), xp.asarray(test),
                          xp.asarray(test_labels), epochs=30, batch_size=40)
    assert result == (1.0, 1.0)


def test_probe_keeps_class_indices_when_a_class_has_no_training_image(xp):
    """Classes 0 and 2 in the training split, 0, 1 and 2 held out, num_classes 3: class 2 is
    still predicted as class 2 (not renumbered), and the class-1 images, which no training
    image taught (drawn here from class 0's cluster), are counted, as mistakes: test top-1 is
    exactly 2/3."""
    rng = numpy.random.default_rng(3)
    centres = numpy.array([[4.0, 0.0], [4.0, 0.0], [-4.0, 0.0]])
    train, train_labels = clusters(rng, 30, centres[[0, 2]], 0.5)
    train_labels = train_labels * 2                               # classes 0 and 2
    test, test_labels = clusters(rng, 10, centres, 0.5)
    train_top1, test_top1 = linear_probe(xp.asarray(train), xp.asarray(train_labels),
                                         xp.asarray(test), xp.asarray(test_labels), epochs=30,
                                         batch_size=20, num_classes=3)
    assert train_top1 == 1.0 and test_top1 == pytest.approx(2 / 3)


def logistic_regression_by_torch(train, train_labels, test, classes):
    """The predictions on the training and the test points of the multinomial logistic
    regression that minimises the mean cross-entropy on (train, train_labels), no penalty,
    found by PyTorch's L-BFGS in float64 (the classes overlap, so the minimum is finite).
    Standardising the features first, as the probe does, changes the parametrisation and not
    the minimiser's predictions."""
    torch = import_torch()
    mean, std = train.mean(axis=0), train.std(axis=0)
    x, y = torch.from_numpy((train - mean) / std), torch.from_numpy(train_labels)
    weight = torch.zeros(train.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight + bias, y)
        value.backward()
        return value
    optimizer.step(loss)
    with torch.no_grad():
        return [(torch.from_numpy((points - mean) / std) @ weight + bias).argmax(dim=1).numpy()
                for points in (train, test)]


def test_probe_reaches_the_predictions_of_the_logistic_regression_optimum():
    """Three overlapping classes (no classifier is right on all): the probe, trained long
    enough (100 full-batch steps at lr 2), predicts as the exact minimiser does, on the training and
    on the held-out points, to within one point in each count."""
    rng = numpy.random.default_rng(4)
    centres = rng.standard_normal((3, 4)) * 1.5
    train, train_labels = clusters(rng, 80, centres, 1.0)
    test, test_labels = clusters(rng, 40, centres, 1.0)
    optimum_train, optimum_test = logistic_regression_by_torch(train, train_labels, test, 3)

    def probe(features, labels):
        return linear_probe(train, train_labels, features, labels, epochs=100, batch_size=240,
                            lr=2.0)
    train_top1, test_top1 = probe(test, test_labels)
    assert 0.8 < (optimum_test == test_labels).mean() < 0.95  # overlapping, yet learnable
    assert abs(train_top1 - (optimum_train == train_labels).mean()) <= 1 / 240
    assert abs(test_top1 - (optimum_test == test_labels).mean()) <= 1 / 120
    counts = predicted_counts(lambda f, labels: probe(f, labels)[1], test, 3)
    assert numpy.abs(numpy.subtract(counts, numpy.bincount(optimum_test, minlength=3))).max() <= 1
