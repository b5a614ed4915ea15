"""Gated attention multiple-instance learning (Ilse, Tomczak & Welling 2018) on frozen cell embeddings.

Small on purpose (82 patients): the embeddings are standardised and projected on the training cells'
first principal components, then one hidden layer, a gated attention over the bag's cells and a
linear output on the attended mean. Full-batch AdamW with weight decay and dropout, a fixed number of
epochs, one CPU thread and a fixed seed, so a fit is deterministic. Settings are the researcher's
(scratch/deepapl/evaluate.py ``attention_mil``), not searched again here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leukoscope.errors import BundleError
from leukoscope.models.patient.scorers import Scorer, Tensors, need, prefixed, scorer_kind

#: PCA width, hidden width, attention width, epochs, learning rate, weight decay, dropout
DEFAULTS: dict[str, Any] = {"components": 128, "hidden": 64, "attention": 32, "epochs": 100,
                            "lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.25}


def _network(d: int, hidden: int, attention: int, dropout: float) -> Any:
    import torch
    from torch import nn

    class GatedAttentionMIL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU())
            self.V, self.U = nn.Linear(hidden, attention), nn.Linear(hidden, attention)
            self.w = nn.Linear(attention, 1)
            self.out = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Per-cell logits and attention (B, L) of padded bags; the bag logit is their weighted sum."""
            h = self.embed(x)
            a = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
            a = torch.softmax(a.masked_fill(~mask, -1e9), dim=1)
            return self.out(h).squeeze(-1), a

    return GatedAttentionMIL()


def _padded(bags: list[np.ndarray]) -> tuple[Any, Any]:
    import torch

    L = max(len(b) for b in bags)
    x = np.zeros((len(bags), L, bags[0].shape[1]), np.float32)
    mask = np.zeros((len(bags), L), bool)
    for i, b in enumerate(bags):
        x[i, :len(b)], mask[i, :len(b)] = b, True
    return torch.from_numpy(x), torch.from_numpy(mask)


@scorer_kind("mil")
@dataclass
class MilScorer(Scorer):
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # (k, d): standardised embedding -> k inputs
    net: Any
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))

    def project(self, X: np.ndarray) -> np.ndarray:
        return (((X - self.mean) / self.scale) @ self.components.T).astype(np.float32)

    def bag(self, X: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        x, mask = _padded([self.project(X)])
        with torch.no_grad():
            s, a = self.net.eval()(x, mask)
        return s[0].double().numpy(), a[0].double().numpy()

    def cell_scores(self, X: np.ndarray, types: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(self.project(X)[:, None, :])
        with torch.no_grad():
            return self.net.eval()(x, torch.ones(len(X), 1, dtype=torch.bool))[0][:, 0].double().numpy()

    def tensors(self) -> Tensors:
        out = {"mean": self.mean, "scale": self.scale, "components": self.components}
        out.update({f"net.{k}": v.detach().numpy() for k, v in self.net.state_dict().items()})
        return out

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings}

    @classmethod
    def load(cls, spec: dict[str, Any], tensors: Tensors) -> MilScorer:
        import torch

        settings = {k: spec.get(k, v) for k, v in DEFAULTS.items()}
        comp = need(tensors, "components", (None, None))
        k, d = comp.shape
        net = _network(k, int(settings["hidden"]), int(settings["attention"]), float(settings["dropout"]))
        state = {n: torch.from_numpy(np.asarray(v, np.float32)) for n, v in prefixed(tensors, "net").items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BundleError(f"weights: attention-MIL tensors do not fit its settings "
                              f"({str(e)[:200]})") from None
        return cls(need(tensors, "mean", (d,)), need(tensors, "scale", (d,)), comp, net.eval(), settings)


def fit_mil(bags: list[np.ndarray], y: np.ndarray, seed: int = 0, **settings: Any) -> MilScorer:
    """Fit the network on bags of embeddings (one array of cells per patient) and 0/1 labels."""
    import torch
    from sklearn.decomposition import PCA

    s = {**DEFAULTS, **settings}
    cells = np.concatenate(bags)
    mean, scale = cells.mean(axis=0), cells.std(axis=0) + 1e-6
    k = int(min(s["components"], len(cells) - 1, cells.shape[1]))
    pca = PCA(k, random_state=seed).fit((cells - mean) / scale)
    components = pca.components_ / np.sqrt(pca.explained_variance_[0])  # first input of unit variance
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = _network(k, int(s["hidden"]), int(s["attention"]), float(s["dropout"]))
        scorer = MilScorer(mean, scale, components, net, s)
        x, mask = _padded([scorer.project(b) for b in bags])
        target = torch.tensor(y, dtype=torch.float32)
        pos_weight = torch.tensor((1 - y).sum() / max(y.sum(), 1), dtype=torch.float32)
        opt = torch.optim.AdamW(net.parameters(), lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
        for _ in range(int(s["epochs"])):
            net.train()
            opt.zero_grad()
            cell_logits, a = net(x, mask)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                (cell_logits * a).sum(1), target, pos_weight=pos_weight)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return scorer
