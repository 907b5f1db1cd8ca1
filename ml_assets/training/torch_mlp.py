"""A small PyTorch multilayer perceptron behind the scikit-learn classifier interface.

Training needs torch, which is imported inside :meth:`TorchMLPClassifier.fit` only, and runs
on a GPU when one is visible. Once trained, the network's weights are kept as numpy arrays and
:meth:`TorchMLPClassifier.predict_proba` is a numpy forward pass, so the pickled model loads
and scores where torch is not installed: evaluation, registries and serving.
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
_LOG_PREFIX = "[ml_assets.torch_mlp]"
# Epoch losses are logged about this many times per fit, so a long job's log stays readable.
_LOG_LINES = 5


def _say(message: str) -> None:
    # Printed rather than logged: the job's stdout is its log on every backend.
    print(f"{_LOG_PREFIX} {message}", flush=True)


@contextlib.contextmanager
def _one_cpu_thread(torch: Any) -> Iterator[None]:
    """Run torch's CPU operators on one thread for the duration, then restore the setting.

    The operations of a network this small take microseconds; splitting them over threads
    costs more in synchronisation than it saves, and on a busy machine (a shared node, or
    tests running side by side) waiting threads slowed a two-second fit down to a minute.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def resolve_device(requested: str, cuda_available: bool) -> str:
    """The torch device to train on: ``"cuda"`` or ``"cpu"``.

    ``"auto"`` takes the GPU when CUDA is available and the CPU otherwise. An explicit
    ``"cuda"`` without a visible GPU is an error rather than a quiet fall-back, because a job
    that demands a GPU and runs for hours on a CPU instead is worse than one that fails at once.
    """
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested == "cuda" and not cuda_available:
        raise RuntimeError(
            "device='cuda' was requested but torch sees no CUDA GPU (torch.cuda.is_available() "
            "is False); give the job a GPU and a CUDA build of torch, or set device: auto or cpu"
        )
    return requested


class TorchMLPClassifier(ClassifierMixin, BaseEstimator):
    """Binary classifier: standardised inputs, ReLU hidden layers and one output logit, trained
    with AdamW on binary cross-entropy over shuffled mini-batches.

    Hyperparameters: ``hidden_sizes`` (width of each hidden layer; empty gives a linear model),
    ``epochs`` (passes over the training rows), ``lr`` (AdamW learning rate), ``batch_size``,
    ``weight_decay`` (AdamW's decoupled weight decay), ``seed`` (passed to ``torch.manual_seed``
    and to the shuffling generator: the same seed, data and device give the same model, bit
    for bit on the CPU) and ``device`` (see :func:`resolve_device`). Values are checked in
    :meth:`fit`; an unknown name is a TypeError at construction, as for scikit-learn.

    Inputs are standardised with the training rows' mean and standard deviation (a constant
    column is left unscaled), so the trainer suits any numeric feature set.

    Fitted attributes: ``classes_`` (``[0, 1]``), ``n_features_in_``, ``device_`` (the device
    it trained on, with the GPU's name), ``loss_curve_`` (mean training loss per epoch),
    ``input_mean_`` and ``input_scale_``, and ``coefs_`` / ``intercepts_``: float32 numpy
    arrays per layer, weights shaped ``(inputs, outputs)``. No torch object is kept.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (64, 32),
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 1e-4,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.device = device

    def _check_hyperparameters(self) -> list[int]:
        """Validate the hyperparameters; return the hidden sizes as a list of ints."""
        sizes = self.hidden_sizes
        if (
            isinstance(sizes, str | bytes)
            or not isinstance(sizes, Sequence)
            or not all(_is_integer(size) and size >= 1 for size in sizes)
        ):
            raise ValueError(f"hidden_sizes must be a list of positive integers, got {sizes!r}")
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            if not _is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_integer(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        # Written as "not (x > 0)" so that NaN fails too.
        if not _is_real(self.lr) or not self.lr > 0:
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        if not _is_real(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        return [int(size) for size in sizes]

    def fit(
        self, X: Any, y: Any, epoch_callback: Callable[[int, int, float], None] | None = None
    ) -> TorchMLPClassifier:
        """Train on features ``X`` (rows by columns, numeric) and labels ``y`` (0/1, both present).

        ``epoch_callback(epoch, epochs, mean_loss)`` is called after every epoch, e.g. to report
        progress and the training curve while the job runs.

        Raises ValueError for bad hyperparameters or data, ImportError when torch is missing and
        RuntimeError when ``device="cuda"`` finds no GPU.
        """
        hidden_sizes = self._check_hyperparameters()
        features = np.asarray(X, dtype=np.float32)
        labels = np.asarray(y).ravel()
        if features.ndim != 2 or len(features) == 0 or features.shape[1] == 0:
            raise ValueError(f"X must be a non-empty 2-D table, got shape {features.shape}")
        if len(labels) != len(features):
            raise ValueError(f"X has {len(features)} rows but y has {len(labels)} labels")
        if not np.all(np.isfinite(features)):
            raise ValueError("X must hold finite numbers (no NaN or infinity)")
        present = set(np.unique(labels).tolist())
        if present != {0, 1}:
            raise ValueError(f"y must hold both labels 0 and 1 and nothing else, found {present}")
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                "the torch_mlp trainer needs PyTorch to train (pip install torch in the training "
                "environment); scoring an already trained model does not"
            ) from error

        device = resolve_device(self.device, torch.cuda.is_available())
        where = f"cuda ({torch.cuda.get_device_name()})" if device == "cuda" else "cpu"
        _say(f"training on {where} with torch {torch.__version__}")
        started = time.monotonic()

        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale[scale == 0] = 1.0
        torch.manual_seed(int(self.seed))
        layers: list[Any] = []
        width = features.shape[1]
        for size in hidden_sizes:
            layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
            width = size
        layers.append(torch.nn.Linear(width, 1))
        network = torch.nn.Sequential(*layers).to(device)
        inputs = torch.from_numpy((features - mean) / scale).to(device)
        targets = torch.from_numpy(labels.astype(np.float32)).to(device)

        with _one_cpu_thread(torch):
            curve = self._train(torch, network, inputs, targets, device, epoch_callback)

        linear = [layer for layer in network if isinstance(layer, torch.nn.Linear)]
        self.coefs_ = [layer.weight.detach().cpu().numpy().T.copy() for layer in linear]
        self.intercepts_ = [layer.bias.detach().cpu().numpy().copy() for layer in linear]
        self.input_mean_ = mean
        self.input_scale_ = scale
        self.loss_curve_ = curve
        self.device_ = where
        self.n_features_in_ = features.shape[1]
        self.classes_ = np.array([0, 1])
        _say(f"trained {self.epochs} epochs in {time.monotonic() - started:.2f}s on {device}")
        return self

    def _train(
        self,
        torch: Any,
        network: Any,
        inputs: Any,
        targets: Any,
        device: str,
        epoch_callback: Callable[[int, int, float], None] | None,
    ) -> list[float]:
        """Run the epochs; return the mean training loss of each."""
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay)
        )
        loss_function = torch.nn.BCEWithLogitsLoss()
        # Shuffling draws from its own CPU generator, so the order is the same on every device.
        shuffler = torch.Generator().manual_seed(int(self.seed))
        rows, batch_size, epochs = len(inputs), int(self.batch_size), int(self.epochs)
        log_every = max(1, epochs // _LOG_LINES)
        curve: list[float] = []
        for epoch in range(1, epochs + 1):
            order = torch.randperm(rows, generator=shuffler).to(device)
            total = torch.zeros((), device=device)
            for start in range(0, rows, batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_function(network(inputs[batch]).squeeze(1), targets[batch])
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(batch)
            # One device-to-host copy per epoch, not per batch, keeps a GPU busy.
            curve.append(float(total) / rows)
            if epoch_callback is not None:
                epoch_callback(epoch, epochs, curve[-1])
            if epoch % log_every == 0 or epoch == epochs:
                _say(f"epoch {epoch}/{epochs} loss {curve[-1]:.4f}")
        return curve

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(rows, 2)``: column 0 for label 0, column 1 for label 1.

        A numpy forward pass over the stored weights; torch is not needed.
        """
        if not hasattr(self, "coefs_"):
            raise NotFittedError("this TorchMLPClassifier is not fitted yet; call fit first")
        values = np.asarray(X, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have {self.n_features_in_} feature columns, got shape {values.shape}"
            )
        hidden = (values - self.input_mean_) / self.input_scale_
        for weights, bias in zip(self.coefs_[:-1], self.intercepts_[:-1], strict=True):
            hidden = np.maximum(hidden @ weights + bias, 0.0)
        logit = (hidden @ self.coefs_[-1] + self.intercepts_[-1])[:, 0].astype(np.float64)
        # The logistic function written with tanh, which cannot overflow for large logits.
        positive = 0.5 * (1.0 + np.tanh(0.5 * logit))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels: 1 where the positive-class probability is at least 0.5."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)
