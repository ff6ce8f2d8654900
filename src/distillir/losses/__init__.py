"""Training objectives, one small `nn.Module` per file.

Distillation losses take (B, n) student and teacher scores over each query's candidate list and an
optional (B, n) bool mask (True = a real passage, False = padding), and reduce to a scalar averaged over
queries:

- `KLDivergenceLoss`        FiD-KD, Atlas, RocketQAv2 (dynamic: `detach_teacher=False`), Re2G (`scale_by_t2`)
- `MSEDistillLoss`          FiD-KD's regression alternative
- `EMDR2Loss`               EMDR² / Atlas: the answer's marginal likelihood over the student's retrieval
- `MaxMarginDistillLoss`    FiD-KD's pairwise hinge alternative
- `ListwiseCrossEntropyLoss` supervised listwise CE with gold labels (RocketQAv2 L_sup, Re2G and AR2 rankers)
- `AdversarialRetrieverLoss` AR2's retriever step
- `DistilledRankNetLoss`    DGR, with `order_by_teacher` to put the student's scores in the teacher's order
- `RankListNetLoss`         ListNet on a teacher's order (DGR's loss ablation)
- `InBatchListLoss`         other questions' lists as in-batch negatives for any list loss (B, B, n scores)

Paper objectives that combine them: `JointListwiseLoss` (RocketQAv2), `Re2GLoss` (Re2G), `DGRLoss` (DGR).

Names from `distillir.losses.contrastive` (e.g. `ContrastiveLoss`) are re-exported lazily.
"""

from __future__ import annotations

import importlib

from distillir.losses.adversarial import AdversarialRetrieverLoss
from distillir.losses.emdr2 import EMDR2Loss
from distillir.losses.generative_retrieval import DGRLoss
from distillir.losses.in_batch_list import InBatchListLoss
from distillir.losses.joint_listwise import JointListwiseLoss
from distillir.losses.kl_divergence import KLDivergenceLoss
from distillir.losses.listnet import RankListNetLoss
from distillir.losses.listwise_ce import ListwiseCrossEntropyLoss
from distillir.losses.max_margin import MaxMarginDistillLoss
from distillir.losses.mse import MSEDistillLoss
from distillir.losses.rag_distill import Re2GLoss
from distillir.losses.ranknet import DistilledRankNetLoss, order_by_teacher

__all__ = [
    "AdversarialRetrieverLoss",
    "DGRLoss",
    "DistilledRankNetLoss",
    "EMDR2Loss",
    "InBatchListLoss",
    "JointListwiseLoss",
    "KLDivergenceLoss",
    "ListwiseCrossEntropyLoss",
    "MSEDistillLoss",
    "MaxMarginDistillLoss",
    "RankListNetLoss",
    "Re2GLoss",
    "order_by_teacher",
]

_CONTRASTIVE = "distillir.losses.contrastive"


def __getattr__(name: str):
    # Contrastive losses live in their own module; load it only when one of its names is asked for.
    if not name.startswith("_"):
        try:
            module = importlib.import_module(_CONTRASTIVE)
        except ModuleNotFoundError as e:
            if e.name != _CONTRASTIVE:
                raise
        else:
            exported = getattr(module, "__all__", None)
            if hasattr(module, name) and (exported is None or name in exported):
                return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
