"""Few-shot probes end to end: images → embed → probe fit → predict, on classes a random-weight model still
separates (colours), the logistic regression against scikit-learn's, Meta's kNN vote, and bad input."""

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw
from sklearn.linear_model import LogisticRegression

from dinov3kit.cli import main
from dinov3kit.tools import probe_math as pm
from dinov3kit.tools.embed import embed_images
from dinov3kit.tools.probe import ProbeError, ProbeHead, fit_probe, index_features, predict_probe
from dinov3kit.tools.runtime import Embedder
from oracles.hf_twin import save_hf_vit

CLASSES = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def draw_image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A noisy background of `colour` (jittered) with a random grey shape on it."""
    base = np.clip(np.array(colour) + rng.integers(-30, 30, 3), 0, 255)
    pixels = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    x, y, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 12))]
    ImageDraw.Draw(image).ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def make_dataset(folder: Path, per_class: int, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    labels = {}
    for name, colour in CLASSES.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / name / f"{name}_{i}.png"
            draw_image(colour, rng).save(path)
            labels[str(path)] = name
    return labels


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    _, model = save_hf_vit(root / "vit", seed=3)
    embedder = Embedder.load(model, device="cpu", resolution=64)
    labels = make_dataset(root / "train", per_class=10, seed=0)
    index = root / "train.parquet"
    embed_images([root / "train"], index, embedder=embedder, workers=0, progress=False)
    return {"root": root, "model": model, "embedder": embedder, "labels": labels, "index": index}


def write_csv(path: Path, rows: dict[str, str], header: bool = True) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(["path", "label"])
        writer.writerows(rows.items())
    return path


def test_probes_learn_separable_classes_well_above_chance(setup):
    result = fit_probe(setup["index"], labels_from_folder=True)
    assert result.head.classes == ["blue", "green", "red"] and result.folds == 5
    assert result.accuracy["linear"] >= 0.9 and result.accuracy["knn"] >= 0.9  # chance: 1/3
    assert result.confusion["linear"].sum() == 30 and np.trace(result.confusion["linear"]) == round(30 * result.accuracy["linear"])
    assert set(result.l2_scores) == set(pm.L2_GRID) and result.head.meta["l2"] in pm.L2_GRID
    assert "confusion matrix, linear" in result.report()


def test_cli_fit_then_predict_new_images_and_the_index(setup, tmp_path, capsys):
    labels = write_csv(tmp_path / "labels.csv", setup["labels"])
    head = tmp_path / "head.safetensors"
    assert main(["probe", "fit", str(setup["index"]), "--labels", str(labels), "-o", str(head), "--l2", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "5-fold cross-validated accuracy over 30 images" in out and "kNN (k=20, T=0.07)" in out
    assert (tmp_path / "head.confusion.png").stat().st_size > 0 and Image.open(tmp_path / "head.confusion.png").width > 100
    assert "confusion matrix, knn" in (tmp_path / "head.report.txt").read_text()

    fresh = make_dataset(tmp_path / "fresh", per_class=4, seed=1)
    (tmp_path / "fresh" / "broken.png").write_bytes(b"not an image")
    for method in ("linear", "knn"):
        target = tmp_path / f"pred_{method}.csv"
        assert main(["probe", "predict", str(head), str(tmp_path / "fresh"), "-o", str(target), "--method", method, "-q"]) == 0
        rows = list(csv.DictReader(open(target)))
        assert len(rows) == 13 and [r for r in rows if r["error"]][0]["path"].endswith("broken.png")
        scored = [r for r in rows if not r["error"]]
        assert np.mean([r["label"] == fresh[r["path"]] for r in scored]) >= 0.9
        assert all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4 for r in scored)

    target = tmp_path / "pred_index.parquet"
    assert main(["probe", "predict", str(head), str(setup["index"]), "-o", str(target)]) == 0
    table = pq.read_table(target).to_pydict()
    assert table["path"] == sorted(setup["labels"]) and set(table["label"]) == set(CLASSES)


def test_saved_head_predicts_like_the_fitted_one(setup, tmp_path):
    result = fit_probe(setup["index"], labels=setup["labels"], l2=0.01)
    result.head.save(tmp_path / "h.safetensors")
    loaded = ProbeHead.load(tmp_path / "h.safetensors")
    x = index_features(setup["index"]).x
    torch.testing.assert_close(loaded.probabilities(x), result.head.probabilities(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded.probabilities(x, "knn"), result.head.probabilities(x, "knn"), rtol=0, atol=1e-6)
    images = predict_probe(loaded, [setup["root"] / "train"], embedder=setup["embedder"])
    by_index = predict_probe(loaded, [setup["index"]])
    assert [(p.path, p.label) for p in images] == [(p.path, p.label) for p in by_index]
    np.testing.assert_allclose([p.probability for p in images], [p.probability for p in by_index], atol=1e-4)


def test_logistic_regression_matches_scikit_learn():
    """Same objective as LogisticRegression(C = 1 / (l2 N)): same held-out accuracy, same probabilities."""
    generator = torch.Generator().manual_seed(0)
    classes, width, rows = 4, 32, 400
    y = torch.randint(0, classes, (rows,), generator=generator)
    x = 0.5 * torch.randn(classes, width, generator=generator)[y] + torch.randn(rows, width, generator=generator)
    train, test = slice(0, 300), slice(300, None)
    scale = pm.Standardizer.fit(x[train])
    for l2 in (1e-3, 1e-1):
        weight, bias = pm.fit_logistic(scale(x[train]), y[train], classes, l2)
        ours = pm.logistic_probabilities(scale(x[test]), weight, bias).numpy()
        oracle = LogisticRegression(C=1 / (l2 * 300), max_iter=10000, tol=1e-8).fit(scale(x[train]).numpy(), y[train].numpy())
        theirs = oracle.predict_proba(scale(x[test]).numpy())
        our_accuracy, their_accuracy = (ours.argmax(1) == y[test].numpy()).mean(), (theirs.argmax(1) == y[test].numpy()).mean()
        assert 0.5 < their_accuracy < 1.0  # a problem where the two could disagree
        assert abs(our_accuracy - their_accuracy) <= 0.01
        np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_logistic_regression_on_index_features_matches_scikit_learn(setup):
    features = index_features(setup["index"])
    names = [Path(p).parent.name for p in features.paths]
    y = torch.tensor([sorted(CLASSES).index(n) for n in names])
    scale = pm.Standardizer.fit(features.x)
    weight, bias = pm.fit_logistic(scale(features.x), y, 3, 0.1)
    oracle = LogisticRegression(C=1 / (0.1 * len(y)), max_iter=10000, tol=1e-8).fit(scale(features.x).numpy(), y.numpy())
    np.testing.assert_allclose(pm.logistic_probabilities(scale(features.x), weight, bias).numpy(),
                               oracle.predict_proba(scale(features.x).numpy()), atol=1e-3)


def test_knn_is_metas_weighted_vote():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 1.0]])  # cosine similarities: 0.894, 0.984, 0.447, -0.894
    probabilities = pm.knn_probabilities(train, labels, query, 3, k=3, temperature=0.07)
    sims = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    top = torch.tensor([sims[0, 1], sims[0, 0], sims[0, 2]])
    weights = torch.softmax(top / 0.07, dim=0)
    torch.testing.assert_close(probabilities[0], torch.stack([weights[1], weights[0] + weights[2], torch.tensor(0.0)]))


def test_folds_are_stratified_and_grouped():
    y = torch.tensor([0] * 6 + [1] * 4)
    parts = pm.folds(y, 2)
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert all(int((y[p] == 0).sum()) == 3 and int((y[p] == 1).sum()) == 2 for p in parts)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    for part in pm.folds(y, 3, groups=groups):
        assert all(set((groups == g).nonzero().flatten().tolist()) <= set(part.tolist()) for g in groups[part].tolist())


def test_clear_errors_for_bad_labels(setup, tmp_path, capsys):
    some = dict(list(setup["labels"].items())[:25])
    with pytest.raises(ProbeError, match="5 of 30 index rows have no label.*--skip-unlabelled"):
        fit_probe(setup["index"], labels=write_csv(tmp_path / "some.csv", some))
    assert fit_probe(setup["index"], labels=some, skip_unlabelled=True, l2=0.1).head.meta["train_rows"] == 25
    unknown = {**setup["labels"], str(tmp_path / "elsewhere.png"): "red"}
    with pytest.raises(ProbeError, match="1 labelled images are not in the index, e.g. .*elsewhere.png; embed them"):
        fit_probe(setup["index"], labels=write_csv(tmp_path / "unknown.csv", unknown, header=False))
    single = {path: "red" for path in setup["labels"]}
    with pytest.raises(ProbeError, match="only the class 'red'; a classifier needs images of at least two classes"):
        fit_probe(setup["index"], labels=single)
    with pytest.raises(ProbeError, match="no such labels file"):
        fit_probe(setup["index"], labels=tmp_path / "absent.csv")
    assert main(["probe", "fit", str(setup["index"]), "--labels", str(tmp_path / "absent.csv")]) == 2
    assert "dinov3kit probe: error:" in capsys.readouterr().err


def test_head_and_index_of_different_models_are_refused(setup, tmp_path):
    head = fit_probe(setup["index"], labels_from_folder=True, l2=0.1).head
    _, wider = save_hf_vit(tmp_path / "wide", seed=4, hidden_size=96)
    embed_images([setup["root"] / "train" / "red"], tmp_path / "wide.parquet", model=wider, resolution=64,
                 device="cpu", workers=0, progress=False)
    with pytest.raises(ProbeError, match="features of width 192, the head was trained on width 128"):
        predict_probe(head, [tmp_path / "wide.parquet"])
    _, other = save_hf_vit(tmp_path / "other", seed=9)
    embed_images([setup["root"] / "train" / "red"], tmp_path / "other.parquet", model=other, resolution=64,
                 device="cpu", workers=0, progress=False)
    with pytest.raises(ProbeError, match="was made with .*other.*the head was trained on features of .*vit"):
        predict_probe(head, [tmp_path / "other.parquet"])
    with pytest.raises(ProbeError, match="width 192, the head was trained on width 128"):
        predict_probe(head, [setup["root"] / "train" / "red"], model=str(wider), device="cpu")


def test_labels_files_relative_paths_and_tiny_classes(setup, tmp_path, monkeypatch):
    train = setup["root"] / "train"
    beside = {str(Path(p).relative_to(setup["root"])): label for p, label in setup["labels"].items()}
    result = fit_probe(setup["index"], labels=write_csv(setup["root"] / "relative.csv", beside), l2=0.1)  # from the CSV's folder
    assert result.head.meta["train_rows"] == 30
    monkeypatch.chdir(train)
    from_here = {str(Path(p).relative_to(train)): label for p, label in setup["labels"].items()}
    assert fit_probe(setup["index"], labels=write_csv(tmp_path / "cwd.csv", from_here), l2=0.1).head.meta["train_rows"] == 30
    one_each = {next(p for p, label in setup["labels"].items() if label == name): name for name in CLASSES}
    tiny = fit_probe(setup["index"], labels=one_each, skip_unlabelled=True)
    assert tiny.folds == 0 and "no cross-validation" in tiny.report() and tiny.head.meta["l2"] == pytest.approx(1 / 3)
    assert [p.label for p in predict_probe(tiny.head, [setup["index"]]) if p.path in one_each] == [one_each[p] for p in sorted(one_each)]
