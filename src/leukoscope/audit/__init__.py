"""Data audit: exact and near-duplicate cells, label conflicts and leakage hidden from subject ids.

Public cell-image sets are copied, re-encoded, flipped, rotated, cropped and merged; a near-copy of
a training cell on the test side inflates every figure, whatever the subject ids say. The audit
finds such copies before any model is trained:

1. **exact** duplicates share a hash of their decoded pixels (``signatures``);
2. **near** duplicates: each image's nearest neighbours by a DCT signature under all eight flips /
   rotations (``search``) are verified by matching band-passed detail (``signatures``);
3. **embedding** neighbours (opt-in): cosine similarity of embeddings the caller passes in (the
   CLI's are the ``deep`` feature kind), so the audit itself needs no model.

Pairs are joined into clusters (``clusters``): label conflicts, leakage across a split's sides, and
groups a grouped split could leak, which ``dedupe_groups`` merges. ``write_audit`` writes the
report (``report``). The audit sits above ``leukoscope.data`` and below features and models.
"""

from leukoscope.audit.clusters import KINDS, AuditResult
from leukoscope.audit.find import EMBED_THRESHOLD, THRESHOLD, audit, dedupe_groups
from leukoscope.audit.report import write_audit

__all__ = ["EMBED_THRESHOLD", "KINDS", "THRESHOLD", "AuditResult", "audit", "dedupe_groups", "write_audit"]
