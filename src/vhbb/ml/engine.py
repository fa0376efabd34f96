"""The shared training engine: one loop for every network of the workflow.

The weight-transformation network and every classifier method (:mod:`vhbb.ml.methods`) are
*configurations* of this loop, not copies of it (the engine knows no method by name):

* data live on the device as tensors (a dict of equal-length tensors per dataset); a batch is an
  index slice of a per-epoch permutation drawn from a seeded ``torch.Generator`` (no per-sample
  ``DataLoader``);
* a training is a list of :class:`Phase` objects (epochs, learning rate per network); each phase
  runs a list of :class:`Step` objects per iteration: which optimiser steps, on which objective,
  from which dataset, how often (``repeats``, ``every``) — an adversary trained k times per
  classifier step, or a domain branch every 6th label step, are just steps;
* an objective returns named loss terms (``total`` is minimised); term means are accumulated on
  the device and read once per epoch, non-finite flags likewise (no host sync per step);
* checkpoints every N epochs (atomic, with the RNG states) and resume after an interruption give
  the same model as an uninterrupted run on CPU; a non-finite loss stops the training with the
  epoch and the term named, keeping the last good checkpoint;
* a batch slices only the tensors its objective reads (:class:`_Batch`, on first access);
* validation runs every ``validate_every`` epochs of a phase (and at each phase's last epoch);
  early stopping's patience counts epochs, so a stop lands at the same distance from the best
  epoch whatever the validation interval.  Which epochs were validated is in the history.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhbb.core.errors import VhbbError

log = logging.getLogger(__name__)

Batch = Mapping[str, Any]
Objective = Callable[[Mapping[str, Any], Batch], dict[str, Any]]


class TrainingError(VhbbError):
    """A training cannot continue (non-finite loss, empty dataset)."""


@dataclass
class Step:
    """One optimiser update on one objective, drawn from one dataset."""

    network: str  # key of the optimisers dict: whose parameters this step updates
    objective: Objective
    dataset: str = "train"
    repeats: int = 1  # consecutive updates per iteration (e.g. adversary steps)
    every: int = 1  # run on iterations i with i % every == 0 (e.g. a domain branch 1:6)
    name: str = ""


@dataclass
class Phase:
    name: str
    epochs: int
    steps: list[Step]
    lr: dict[str, float] = field(default_factory=dict)  # per network; missing: unchanged
    #: validate every this many epochs of the phase (its last epoch always); None: the
    #: ``validate_every`` of :func:`train`
    validate_every: int | None = None

    def validated(self, epoch_in_phase: int, every: int) -> bool:
        """Whether the phase's epoch ``epoch_in_phase`` (0-based) runs the validation."""
        return (epoch_in_phase + 1) % every == 0 or epoch_in_phase == self.epochs - 1


@dataclass
class EarlyStopping:
    """Stop when the validation objective has not improved for ``patience`` epochs.

    ``objective`` maps an epoch's history entry (training means and validation figures) to the
    monitored number, named ``monitor`` in the history; lower is better (``mode="min"``) or
    higher (``"max"``).  An improvement must beat the best by more than ``min_delta``.  Only
    epochs of the ``phases`` named (all when ``None``) are monitored, so pre-training phases
    never stop a training, and only validated epochs (see :attr:`Phase.validate_every`):
    ``patience`` counts epochs since the best, not validations.  Epochs before ``min_epochs``
    are recorded but neither become the best nor stop the training.  At the end (stopped or not)
    the networks are restored to the best monitored epoch.  The tracker's state travels in
    every checkpoint, so a resumed training stops at the same epoch with the same result.
    """

    objective: Callable[[Mapping[str, Any]], float]
    monitor: str = "val/objective"
    mode: str = "min"
    patience: int = 10
    min_delta: float = 0.0
    phases: tuple[str, ...] | None = None
    #: epochs (counted over all phases) before which no epoch can be the best or stop the
    #: training: an objective that includes a decorrelation term is lowest for the nearly
    #: constant score of the first epochs, which must not be restored as "the best model"
    min_epochs: int = 0

    def __post_init__(self) -> None:
        if self.min_epochs < 0:
            raise ValueError(f"early stopping min_epochs must be >= 0, got {self.min_epochs}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"early stopping mode must be 'min' or 'max', not {self.mode!r}")
        if self.patience < 1:
            raise ValueError(f"early stopping patience must be >= 1, got {self.patience}")


@dataclass
class _Tracker:
    """The early-stopping state: best value and epoch, epochs without improvement, best weights."""

    rule: EarlyStopping
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_networks: dict[str, Any] | None = None
    last_epoch: int | None = None  # the last monitored (validated) epoch

    def update(
        self, epoch: int, phase: str, entry: dict[str, Any], networks: Mapping[str, Any]
    ) -> bool:
        """Record ``entry``'s objective; return True when the training must stop."""
        if self.rule.phases is not None and phase not in self.rule.phases:
            return False
        value = float(self.rule.objective(entry))
        entry[self.rule.monitor] = value
        if epoch < self.rule.min_epochs:  # warm-up: recorded, never the best, never a stop
            return False
        elapsed = 1 if self.last_epoch is None else epoch - self.last_epoch
        self.last_epoch = epoch
        sign = 1.0 if self.rule.mode == "min" else -1.0
        improved = math.isfinite(value) and (
            self.best_value is None or sign * (self.best_value - value) > self.rule.min_delta
        )
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_networks = {
                k: {n: v.detach().clone() for n, v in net.state_dict().items()}
                for k, net in networks.items()
            }
            return False
        self.bad_epochs += elapsed  # epochs, not validations, since the last check
        return self.bad_epochs >= self.rule.patience

    def restore_best(self, networks: Mapping[str, Any]) -> None:
        if self.best_networks is not None:
            for k, net in networks.items():
                net.load_state_dict(self.best_networks[k])

    def state(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_networks": self.best_networks,
            "last_epoch": self.last_epoch,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = int(state["bad_epochs"])
        self.best_networks = state["best_networks"]
        self.last_epoch = state.get("last_epoch")


@dataclass
class History:
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    stop_epoch: int | None = None
    best_epoch: int | None = None
    max_epochs: int | None = None
    monitor: str | None = None
    #: phase name -> its validation interval in epochs (the validated epochs carry
    #: ``"validated": True`` and the validation figures; the others ``"validated": False``)
    validate_every: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "stopped": self.stopped,
            "stop_epoch": self.stop_epoch,
            "best_epoch": self.best_epoch,
            "max_epochs": self.max_epochs,
            "monitor": self.monitor,
            "validate_every": dict(self.validate_every),
        }


def resolve_device(name: str) -> Any:
    """The torch device of the config's ``device`` (``auto``: CUDA when available, else CPU)."""
    import torch

    from vhbb.core.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"config error at 'device': {exc}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (device.index or 0) >= n:
            raise ConfigError(
                f"config error at 'device': '{name}' requested but this machine has "
                f"{n} CUDA device(s); use device: auto or cpu, or run on a GPU node"
            )
    return device


def make_optimizer(params, kind: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):  # type: ignore[no-untyped-def]
    """SGD / Adam / RMSProp with a tensor learning rate (safe to change between steps)."""
    import torch

    fused = {"fused": True} if any(p.is_cuda for p in params) else {}
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise VhbbError(f"unknown optimiser '{kind}' (use adam, sgd or rmsprop)")


class _Sampler:
    """Index batches of one dataset: a fresh seeded permutation each pass."""

    def __init__(self, n: int, batch_size: int, generator, device) -> None:  # type: ignore[no-untyped-def]
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self.perm = None
        self.pos = n

    def next(self):  # type: ignore[no-untyped-def]
        import torch

        if self.pos >= self.n:
            self.perm = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> dict[str, Any]:
        return {"perm": None if self.perm is None else self.perm.cpu(), "pos": self.pos}

    def load(self, state: Mapping[str, Any]) -> None:
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.pos = state["pos"]


@dataclass
class _State:
    """Everything a checkpoint holds: networks, optimisers, RNGs, samplers, history."""

    networks: Mapping[str, Any]
    optimizers: Mapping[str, Any]
    generator: Any
    samplers: Mapping[str, _Sampler]
    history: History
    tracker: _Tracker | None = None

    def restore(self, ckpt: Path, device: Any) -> int:
        """Load ``ckpt``; return the epoch it was written after (0: start afresh).

        Checkpoints are loaded with ``weights_only=True`` only (no pickled code runs, whoever
        wrote the file).  A checkpoint that does not load, or does not fit these networks, is
        discarded with a warning naming it and the training starts from scratch.
        """
        import copy

        import torch

        fresh = (
            {k: copy.deepcopy(n.state_dict()) for k, n in self.networks.items()},
            {k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers.items()},
            self.generator.get_state(),
            torch.get_rng_state(),
        )
        try:
            state = torch.load(ckpt, map_location=device, weights_only=True)
            epoch = self._load(state)
        except Exception as exc:
            log.warning(
                "checkpoint %s does not load (%s: %s); discarding it and training from the start",
                ckpt, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
            )  # fmt: skip
            ckpt.unlink(missing_ok=True)
            for k, net in self.networks.items():  # back to the state before the attempt
                net.load_state_dict(fresh[0][k])
            for k, opt in self.optimizers.items():
                opt.load_state_dict(fresh[1][k])
            self.generator.set_state(fresh[2])
            torch.set_rng_state(fresh[3])
            for s in self.samplers.values():
                s.perm, s.pos = None, s.n
            self.history.epochs = []
            if self.tracker is not None:
                self.tracker.load(_Tracker(self.tracker.rule).state())
            return 0
        log.info("resumed from %s at epoch %d", ckpt, epoch)
        return epoch

    def _load(self, state: Mapping[str, Any]) -> int:
        import torch

        for k, net in self.networks.items():
            net.load_state_dict(state["networks"][k])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        for d, s in state["samplers"].items():
            self.samplers[d].load(s)
        self.history.epochs = state["history"]
        if self.tracker is not None:
            self.tracker.load(state["early_stopping"])
        return int(state["epoch"])

    def save(self, ckpt: Path, epoch: int) -> None:
        """Write the state after ``epoch`` atomically to ``ckpt``."""
        import torch

        from vhbb.core.io import atomic_path

        state = {
            "networks": {k: n.state_dict() for k, n in self.networks.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "samplers": {d: s.state() for d, s in self.samplers.items()},
            "history": self.history.epochs,
            "epoch": epoch,
            "early_stopping": None if self.tracker is None else self.tracker.state(),
        }
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)


def _set_learning_rates(
    optimizers: Mapping[str, Any],
    phase: Phase,
    epoch_in_phase: int,
    lr_decay: Mapping[str, Any] | None,
) -> None:
    for net_name, lr in phase.lr.items():
        factor = 1.0
        if lr_decay and lr_decay.get("every"):
            factor = lr_decay["factor"] ** (epoch_in_phase // lr_decay["every"])
        for group in optimizers[net_name].param_groups:
            group["lr"] = lr * factor


class _Batch(Mapping[str, Any]):
    """The rows ``idx`` of a dataset, each tensor sliced on first access (an objective that
    reads ``x``, ``y`` and ``w`` does not pay for the gathers of the others)."""

    __slots__ = ("_cache", "_data", "_idx")

    def __init__(self, data: Mapping[str, Any], idx: Any) -> None:
        self._data, self._idx = data, idx
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = self._data[key][self._idx]
            return value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _run_epoch(
    phase: Phase,
    n_iter: int,
    networks: Mapping[str, Any],
    optimizers: Mapping[str, Any],
    datasets: Mapping[str, Mapping[str, Any]],
    samplers: Mapping[str, _Sampler],
) -> tuple[dict[str, float], list[str]]:
    """One epoch of ``phase``: the term means (``{step}/{term}``) and the non-finite terms.

    Term sums and non-finite flags stay on the device; they are read once, at the end.
    """
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    bad: dict[str, Any] = {}
    for it in range(n_iter):
        for step in phase.steps:
            if it % step.every:
                continue
            for _ in range(step.repeats):
                idx = samplers[step.dataset].next()
                batch = _Batch(datasets[step.dataset], idx)
                terms = step.objective(networks, batch)
                opt = optimizers[step.network]
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                opt.step()
                prefix = step.name or step.network
                for term, value in terms.items():
                    key = f"{prefix}/{term}"
                    v = value.detach()
                    sums[key] = sums.get(key, 0.0) + v
                    counts[key] = counts.get(key, 0) + 1
                    flag = ~torch.isfinite(v)
                    bad[key] = flag if key not in bad else (bad[key] | flag)
    # one host sync per epoch
    nonfinite = [k for k, f in bad.items() if bool(f)]
    return {k: float(s) / counts[k] for k, s in sums.items()}, nonfinite


def _log_epoch(entry: Mapping[str, Any], total_epochs: int) -> None:
    log.info(
        "epoch %d/%d [%s] %s (%.1f s)",
        entry["epoch"],
        total_epochs,
        entry["phase"],
        " ".join(
            f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float) and k != "seconds"
        ),
        entry["seconds"],
    )


def train(
    networks: Mapping[str, Any],
    optimizers: Mapping[str, Any],
    datasets: Mapping[str, Mapping[str, Any]],
    phases: list[Phase],
    *,
    batch_size: Mapping[str, int] | int,
    seed: int,
    validate: Callable[[], dict[str, Any]] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    lr_decay: Mapping[str, Any] | None = None,
    early_stopping: EarlyStopping | None = None,
    progress: bool = True,
    validate_every: int = 1,
) -> History:
    """Run ``phases`` on ``networks``; return the per-epoch history.

    The phases' epochs are a maximum when ``early_stopping`` is given (see
    :class:`EarlyStopping`); the history records the stopping epoch, the best epoch and why.

    ``datasets``: name -> dict of device tensors of equal length.  ``batch_size``: one value or a
    per-dataset mapping.  ``validate`` is called after every epoch (networks in eval mode) and
    its dict is stored in the history.  ``lr_decay``: ``{"every": E, "factor": f}`` multiplies
    every learning rate by f every E epochs within a phase.  ``validate_every``: the validation
    interval in epochs of the phases that set none (:attr:`Phase.validate_every`); a phase's
    last epoch is always validated, and the history marks each epoch ``validated`` or not.
    """
    import torch
    from tqdm import tqdm

    every = {
        p.name: int(validate_every if p.validate_every is None else p.validate_every)
        for p in phases
    }
    if min(every.values(), default=1) < 1:
        raise ValueError(f"validate_every must be >= 1, got {every}")
    sizes = {name: len(next(iter(d.values()))) for name, d in datasets.items()}
    for name, n in sizes.items():
        if n == 0:
            raise TrainingError(f"dataset '{name}' is empty: nothing to train on")
    device = next(iter(next(iter(datasets.values())).values())).device
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    bs = (lambda d: batch_size) if isinstance(batch_size, int) else (lambda d: batch_size[d])
    samplers = {d: _Sampler(n, bs(d), generator, device) for d, n in sizes.items()}
    history = History()
    tracker = None if early_stopping is None else _Tracker(early_stopping)
    state = _State(networks, optimizers, generator, samplers, history, tracker)
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    start_epoch = state.restore(ckpt, device) if ckpt is not None and ckpt.exists() else 0
    total_epochs = sum(p.epochs for p in phases)
    history.max_epochs = total_epochs
    history.monitor = None if early_stopping is None else early_stopping.monitor
    history.validate_every = every
    if tracker is not None and tracker.bad_epochs >= early_stopping.patience:
        start_epoch = total_epochs  # the checkpoint was written at the stopping epoch
    epoch = 0
    stop = False
    bar = tqdm(
        total=total_epochs, initial=start_epoch, desc="epochs", disable=not progress, mininterval=5
    )
    for phase in phases:
        if stop:
            break
        for epoch_in_phase in range(phase.epochs):
            epoch += 1
            if epoch <= start_epoch:
                continue
            t0 = time.perf_counter()
            _set_learning_rates(optimizers, phase, epoch_in_phase, lr_decay)
            for net in networks.values():
                net.train()
            main = phase.steps[0].dataset
            n_iter = max(1, math.ceil(sizes[main] / bs(main)))
            means, nonfinite = _run_epoch(phase, n_iter, networks, optimizers, datasets, samplers)
            entry: dict[str, Any] = {"epoch": epoch, "phase": phase.name, **means}
            if nonfinite:
                history.stopped = (
                    f"non-finite loss at epoch {epoch} in term(s) {', '.join(nonfinite)}"
                )
                history.epochs.append(entry)
                bar.close()
                kept = (
                    f"; the last good checkpoint is kept in {ckpt}"
                    if ckpt is not None and ckpt.exists()
                    else "; no checkpoint was written yet"
                )
                raise TrainingError(
                    f"training stopped: non-finite loss at epoch {epoch} (phase '{phase.name}') "
                    f"in term(s) {', '.join(nonfinite)}{kept}. Lower the learning rate or check "
                    "the inputs for extreme values."
                )
            validated = phase.validated(epoch_in_phase, every[phase.name])
            entry["validated"] = validated
            if validated and validate is not None:
                for net in networks.values():
                    net.eval()
                with torch.no_grad():
                    entry.update(validate())
            if tracker is not None and validated:
                stop = tracker.update(epoch, phase.name, entry, networks)
            entry["seconds"] = time.perf_counter() - t0
            history.epochs.append(entry)
            _log_epoch(entry, total_epochs)
            bar.update(1)
            if ckpt is not None and (stop or epoch % checkpoint_every == 0):
                state.save(ckpt, epoch)
            if stop:
                break
    bar.close()
    _finish(history, tracker, networks, stop)
    return history


def _finish(
    history: History, tracker: _Tracker | None, networks: Mapping[str, Any], stopped: bool
) -> None:
    """Restore the best monitored epoch and record where and why the training stopped."""
    last = history.epochs[-1]["epoch"] if history.epochs else 0
    history.stop_epoch = last
    if tracker is None:
        history.stopped = history.stopped or "maximum epochs reached (no early stopping)"
        return
    stopped = stopped or tracker.bad_epochs >= tracker.rule.patience
    tracker.restore_best(networks)
    history.best_epoch = tracker.best_epoch
    if stopped:
        history.stopped = (
            f"early stopping at epoch {last}: {tracker.rule.monitor} did not improve by more "
            f"than {tracker.rule.min_delta:g} for {tracker.rule.patience} epochs; restored the "
            f"best epoch {tracker.best_epoch} ({tracker.rule.monitor} = {tracker.best_value:.6g})"
        )
    else:
        history.stopped = (
            f"maximum epochs reached ({last}) before the stopping criterion; restored the best "
            f"epoch {tracker.best_epoch} ({tracker.rule.monitor} = {tracker.best_value})"
        )
