"""The math of few-shot probes, as small pure torch functions: Meta's weighted kNN vote, a multinomial
logistic regression fitted with L-BFGS, stratified / grouped folds, cross-validation and confusion matrices.

Conventions: features `x` [N, D] float, labels `y` [N] int64 in 0..C-1, probabilities [N, C].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Meta's kNN evaluation (dinov3/eval/knn.py): 20 neighbours, softmax temperature 0.07 over cosine similarities.
KNN_K = 20
KNN_TEMPERATURE = 0.07
#: L2 strengths tried by cross-validation (on standardised features, loss averaged over samples).
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def knn_probabilities(
    train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
    k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
) -> torch.Tensor:
    """Meta's weighted vote: the k most cosine-similar training rows vote for their class with weights
    softmax(similarity / temperature) over those k; returns [Q, C] class probabilities."""
    train, queries = F.normalize(train.float(), dim=1), F.normalize(queries.float(), dim=1)
    similarity = queries @ train.T  # [Q, N]
    top, index = similarity.topk(min(k, train.shape[0]), dim=1)  # [Q, k]
    weights = torch.softmax(top / temperature, dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype)
    return votes.scatter_add_(1, train_labels[index], weights)


@dataclass
class Standardizer:
    """Per-feature mean and standard deviation of the training rows (constant features keep std 1)."""

    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        x = x.double()
        std = x.std(dim=0, unbiased=False)
        return cls(x.mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.dtype) - self.mean) / self.std


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, *, max_iter: int = 300, tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: minimise mean cross-entropy + l2/2 ||W||² (bias not penalised) by
    L-BFGS in float64. Same optimum as scikit-learn's LogisticRegression(C = 1 / (l2 * N)).
    Returns weight [C, D] and bias [C]."""
    x, y = x.double(), y.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def logistic_probabilities(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[N, C] softmax probabilities of a fitted (standardised-feature) linear probe."""
    return torch.softmax(x.to(weight.dtype) @ weight.T + bias, dim=1)


def folds(y: torch.Tensor, n_folds: int, groups: torch.Tensor | None = None, seed: int = 0) -> list[torch.Tensor]:
    """Test-row indices of `n_folds` folds: stratified by class (each class dealt round-robin after a
    seeded shuffle), or, with `groups` (e.g. the image of each patch), whole groups dealt to folds."""
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(y), dtype=torch.long)
    if groups is not None:
        unique = groups.unique()
        order = unique[torch.randperm(len(unique), generator=generator)]
        for position, group in enumerate(order.tolist()):
            fold_of[groups == group] = position % n_folds
    else:
        offset = 0
        for label in y.unique().tolist():
            rows = (y == label).nonzero().flatten()
            rows = rows[torch.randperm(len(rows), generator=generator)]
            fold_of[rows] = (torch.arange(len(rows)) + offset) % n_folds
            offset += len(rows)
    return [(fold_of == fold).nonzero().flatten() for fold in range(n_folds)]


def out_of_fold(
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor, y: torch.Tensor, test_folds: Sequence[torch.Tensor], num_classes: int,
) -> torch.Tensor:
    """[N, C] probabilities of every row from a model trained without its fold:
    `predict(train_x, train_y, test_x)` fits and predicts."""
    probabilities = torch.zeros(len(y), num_classes, dtype=torch.float64)
    for test in test_folds:
        train = torch.ones(len(y), dtype=torch.bool)
        train[test] = False
        probabilities[test] = predict(x[train], y[train], x[test]).double()
    return probabilities


def logistic_predictor(num_classes: int, l2: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """fit-and-predict for `out_of_fold`: standardise on the training rows, fit, predict the test rows."""

    def predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor) -> torch.Tensor:
        scale = Standardizer.fit(train_x)
        weight, bias = fit_logistic(scale(train_x), train_y, num_classes, l2)
        return logistic_probabilities(scale(test_x), weight, bias)

    return predict


def knn_predictor(num_classes: int, k: int, temperature: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor) -> torch.Tensor:
        return knn_probabilities(train_x, train_y, test_x, num_classes, k, temperature)

    return predict


def accuracy(probabilities: torch.Tensor, y: torch.Tensor) -> float:
    return float((probabilities.argmax(dim=1) == y).double().mean())


def confusion_matrix(y: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts: row = true class, column = predicted class."""
    return torch.bincount(y * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def choose_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, test_folds: Sequence[torch.Tensor],
              grid: Sequence[float] = L2_GRID) -> tuple[float, dict[float, float]]:
    """The L2 strength of `grid` with the best cross-validated accuracy (ties: the strongest, the most
    regularised), and the accuracy of each."""
    scores = {l2: accuracy(out_of_fold(logistic_predictor(num_classes, l2), x, y, test_folds, num_classes), y) for l2 in grid}
    best = max(scores.values())
    return max(l2 for l2, score in scores.items() if score >= best - 1e-12), scores
